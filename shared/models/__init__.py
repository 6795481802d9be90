"""Models: generation backends, supervised fine-tuning, the tiny offline model, dtypes and chat format.

Importing any module of this package runs this file first, so it is the one place that makes
`import torchvision` work on CPU-only torch (vision_compat.ensure_torchvision) before any module
here imports transformers or torchvision.
"""

from . import vision_compat

vision_compat.ensure_torchvision()
