#!/usr/bin/env bash
# The training side of the GPU check (issue 21 item 1), one line per figure: plain transformers vs
# selfjudge's `sft` on a ~1.9B Qwen2.5-VL (tokens/s, MFU, ratio), where the time goes (step breakdowns,
# one profiled step), then a sweep of candidate trainer options (`gpu_bench variant <name>: ...`), and
# optionally bench/gpu_generate.py's generation comparison on the same model.
#
# On the card, from the repo root, after a non-editable `pip install --no-deps .` plus the wheels
# from ../shared/gpu/device-wheels.sh (scripts/device-check.sh does both):
#     bash bench/gpu_check.sh                   # ~4.5 minutes on an H200
# Each part is its own process under its own time limit, all of them under one budget; the model is
# built once into $GPU_BENCH_WORK and shared. The `gpu_` lines show as they come; everything else
# goes to $OUT/gpu_bench.log (or /tmp when OUT is unset), nvidia-smi samples to $OUT/gpu_bench_util.csv.
#
# Environment: GPU_BENCH_BUDGET    seconds for all parts (default 280): a part that would start with
#                                  under 15 s left is skipped, a variant whose estimate (ours' time,
#                                  + 90 s for compile) does not fit is skipped and says so
#              GPU_BENCH_VARIANTS  comma-separated, in order (default below; names in gpu_bench.VARIANTS)
#              GPU_BENCH_GENERATE  1: also the generation comparison, last (default 0: it was measured
#                                  2026-12-04 and nothing here changes it; it takes ~90 s)
#              GPU_BENCH_WORK      model and state folder (default /tmp/gpu-bench)
#              GPU_BENCH_ARGS      more gpu_bench.py arguments for every part (e.g. `--device cpu --tiny`: a dry run)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp}
mkdir -p "$out"
LOG=$out/gpu_bench.log
work=${GPU_BENCH_WORK:-/tmp/gpu-bench}
budget=${GPU_BENCH_BUDGET:-280}
variants=${GPU_BENCH_VARIANTS:-vision-varlen,all,compile,workers8,liger,all+liger,bf16}
generate=${GPU_BENCH_GENERATE:-0}
extra=${GPU_BENCH_ARGS:-}
reserve=$([ "$generate" = 1 ] && echo 100 || echo 0)  # seconds kept for the generation part
mkdir -p "$work"
: >"$LOG"
start=$(date +%s)
end=$((start + budget))
util_pid=
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,power.draw,clocks.sm --format=csv -lms 500 \
    >"$out/gpu_bench_util.csv" 2>/dev/null &
  util_pid=$!
fi
status=0

# part NAME LIMIT UNTIL ARGS...: gpu_bench.py ARGS under min(LIMIT, UNTIL - now) seconds
part() {
  local name=$1 limit=$2 until=$3
  shift 3
  local left=$((until - $(date +%s)))
  if [ "$left" -lt 15 ]; then
    echo "gpu_bench $name: skipped (time cap: ${left}s left of GPU_BENCH_BUDGET=${budget})" | tee -a "$LOG"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "[$(date -u +%H:%M:%S)] part $name (limit ${limit}s)" >>"$LOG"
  # shellcheck disable=SC2086  # $extra: words
  timeout -k 10 "$limit" python3 bench/gpu_bench.py --model "$work/model" --state "$work/state.json" $extra "$@" 2>&1 |
    tee -a "$LOG" | grep --line-buffered -E '^gpu_'
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "gpu_bench $name: timed out after ${limit}s" | tee -a "$LOG"
  elif [ "$rc" -ne 0 ]; then
    echo "gpu_bench $name: exit $rc" | tee -a "$LOG"
    tail -n 15 "$LOG" | grep -v '^gpu_'
  fi
  [ "$rc" -eq 0 ] || status=$rc
  return 0
}

part build 120 "$end" --parts build
part train 200 "$end" --parts train --profile
for v in ${variants//,/ }; do
  part "variant $v" 180 $((end - reserve)) --parts variants --variants "$v" --deadline $((end - reserve))
done
[ "$generate" = 1 ] && part generate 150 "$end" --parts generate
[ -n "$util_pid" ] && kill "$util_pid" 2>/dev/null
echo "gpu_check: exit $status after $(($(date +%s) - start))s (log $LOG)"
exit "$status"
