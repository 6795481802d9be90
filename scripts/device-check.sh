#!/usr/bin/env bash
# The device checks on a lent GPU card, one part per call (a card lends ~15 minutes in all):
#
#   bash scripts/device-check.sh miniature    # issue 22: base + ceiling + 3 iterations x both arms (~7 min)
#   bash scripts/device-check.sh bench        # issue 21: plain vs ours SFT, breakdown, variant sweep (~5 min; bench/gpu_check.sh)
#
# Run from the repository root on the card, with `.whl` carried (../shared/gpu/device-wheels.sh makes it):
# it installs the wheels the card's image lacks and this project (not editable) under /tmp, once per
# machine, then runs the part. Everything it writes goes under $OUT (logs, results.json, the plot).
set -uo pipefail
part=${1:?usage: $0 miniature|bench}
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
now() { date -u +%H:%M:%S; }
if [ ! -f /tmp/proj/.installed ]; then
  echo "[$(now)] installing carried wheels and the project"
  timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl &&
    PYTHONPATH=/tmp/site timeout 120 python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/proj . &&
    touch /tmp/proj/.installed || { echo "device-check: install failed"; exit 1; }
fi
export PYTHONPATH=/tmp/proj:/tmp/site
export PATH=/tmp/proj/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
case "$part" in
  miniature) BUDGET=${BUDGET:-400} CEILING=${CEILING:-3000} bash scripts/gpu-miniature.sh "$OUT/mini" ;;
  bench) OUT=$OUT bash bench/gpu_check.sh ;;
  *) echo "device-check: unknown part $part"; exit 2 ;;
esac
