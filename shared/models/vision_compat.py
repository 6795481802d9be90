"""Let the CUDA torchvision wheel import on CPU-only torch.

torchvision 0.28 on PyPI is a CUDA build: its C extension cannot load against CPU torch, and
its import then dies in `_meta_registrations` ("operator torchvision::nms does not exist").
Declaring the op schemas in a FRAGMENT library before the import lets the pure-Python parts
(image transforms, used by the Qwen2-VL processors) work; the C ops stay unavailable.
`ensure_torchvision` runs once, when the package is imported (shared/models/__init__.py).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_lib: torch.library.Library | None = None  # kept alive: the ops vanish if it is collected


def _native_ops_load() -> bool:
    """True when torchvision's own C extension loads (then it defines the ops itself)."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to fix
    so = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_C*.so"))
    if not so:
        return False
    try:
        torch.ops.load_library(so[0])
        return True
    except (OSError, RuntimeError):
        return False


def ensure_torchvision() -> None:
    """Make `import torchvision` work. Idempotent; a no-op where torchvision works natively."""
    global _lib
    if _lib is not None or "torchvision" in sys.modules or _native_ops_load():
        return
    _lib = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _SCHEMAS.items():
        if not _has_schema(name):
            _lib.define(schema)


def _has_schema(name: str) -> bool:
    try:
        torch._C._get_schema(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False
