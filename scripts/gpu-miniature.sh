#!/usr/bin/env bash
# The method in miniature on one GPU card, in one command (docs/replicate-gpu.md):
# base model + supervised ceiling + ITERATIONS iterations x both arms (majority, gold) on 1,008
# held-out pairs, `python -m recipes.replicate --profile gpu`, the ceiling side by side with the arms.
#
#   scripts/gpu-miniature.sh OUT_DIR [more `python -m recipes.replicate` options, e.g. --set run.prompts_per_iteration=512]
#
# Environment: BUDGET   seconds after which the arms still running are stopped (default 320; what they
#                       measured is kept); the whole command is killed at BUDGET + 50
#              CEILING  gold traces of the supervised ceiling (default 3000; 0 = none)
#              ITERATIONS (default 3), PYTHON (default python3)
#              WORK     where the models, checkpoints and databases go (default /tmp/selfjudge-gpu-miniature;
#                       hundreds of MB, not copied to OUT_DIR)
# Needs `selfjudge` installed (not editable is fine): it runs from WORK, outside the source tree, with
# WORK/recipes a link to this checkout's recipes/ (the recipe is not part of the installed package).
# Writes OUT_DIR/{results.json,heldout_accuracy.png,majority.log,gold.log,majority.yaml,gold.yaml} (copied
# from WORK/run at the end, whatever happened), OUT_DIR/replicate.out (the tables and progress lines),
# OUT_DIR/replicate.log (stderr), OUT_DIR/gpu.csv (utilisation every 5 s), and prints the progress
# lines, then one `FIGURE ...` line per measured figure.
set -u
out=${1:?usage: $0 OUT_DIR [python -m recipes.replicate options]}
shift
mkdir -p "$out" && out=$(cd "$out" && pwd)
budget=${BUDGET:-320}
ceiling=${CEILING:-3000}
iterations=${ITERATIONS:-3}
work=${WORK:-/tmp/selfjudge-gpu-miniature}
mkdir -p "$work" && work=$(cd "$work" && pwd)
py=${PYTHON:-python3}
src=$(cd "$(dirname "$0")/.." && pwd)
now() { date -u +%H:%M:%S; }

echo "[$(now)] gpu-miniature: out $out, arms stopped at ${budget}s, killed at $((budget + 50))s, ceiling $ceiling"
monitor=""
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 > "$out/gpu.csv" 2>/dev/null &
    monitor=$!
fi

cd "$work" || exit 1     # outside the source tree: the installed package is imported
ln -sfn "$src/recipes" "$work/recipes"   # the recipe alone (`-m` puts WORK first on the path)
timeout -k 20 $((budget + 50)) "$py" -m recipes.replicate --profile gpu --out "$work/run" \
    --set model.device=cuda --iterations "$iterations" --ceiling "$ceiling" --deadline "$budget" "$@" \
    2> "$out/replicate.log" | tee "$out/replicate.out"
rc=${PIPESTATUS[0]}
[ -n "$monitor" ] && kill "$monitor" 2>/dev/null
for f in results.json heldout_accuracy.png majority.log gold.log majority.yaml gold.yaml; do
    [ -f "$work/run/$f" ] && cp "$work/run/$f" "$out/"
done
echo "[$(now)] gpu-miniature: replicate exited with $rc (124: killed at the limit; 1: an arm or the ceiling failed)"
if [ "$rc" -ne 0 ]; then
    echo "--- last lines of $out/replicate.log:"
    grep -v "Loading weights\|Writing model shards" "$out/replicate.log" | tail -n 25
fi

if [ -f "$out/results.json" ]; then
    "$py" - "$out/results.json" <<'EOF'
import json
import sys

from recipes.replicate.miniature import figure_lines

for line in figure_lines(json.load(open(sys.argv[1]))):
    print("FIGURE", line)
EOF
    if [ -f "$out/gpu.csv" ]; then
        awk -F', ' 'NR > 1 { n++; s += $2 } END { if (n) printf "FIGURE gpu utilisation: mean %.0f%% over %d samples\n", s / n, n }' "$out/gpu.csv"
    fi
else
    echo "gpu-miniature: no results.json (the base model did not finish); see $out/replicate.log"
fi
exit "$rc"
