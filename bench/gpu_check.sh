#!/usr/bin/env bash
# The training side of the GPU check (issue 21 item 1), one line per figure: plain transformers vs
# selfjudge's `sft` on a ~1.9B Qwen2.5-VL (tokens/s, MFU, ratio), then bench/gpu_generate.py's
# generation comparison on the same model where that file exists.
#
# On the card, from the repo root, after a non-editable `pip install --no-deps .` plus the wheels
# from ../shared/gpu/device-wheels.sh:
#     bash bench/gpu_check.sh                   # ~2 minutes on an H200; extra args go to gpu_bench.py
# Full stdout/stderr go to $OUT/gpu_bench.log (or /tmp when OUT is unset).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${OUT:-/tmp}/gpu_bench.log
timeout ${GPU_BENCH_TIMEOUT:-240} python3 bench/gpu_bench.py "$@" >"$LOG" 2>&1
rc=$?
grep -E '^gpu_' "$LOG"
echo "gpu_check: exit $rc (log $LOG)"
[ "$rc" -eq 0 ] || tail -n 20 "$LOG"
exit "$rc"
