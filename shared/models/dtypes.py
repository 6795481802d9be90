"""Torch dtypes by the names the config uses (model.dtype, TrainConfig.dtype), for generation and training."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
