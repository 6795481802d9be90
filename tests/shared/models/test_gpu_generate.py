"""bench/gpu_generate.py on CPU with the tiny model: the same code paths the card runs (plain vs
static decode in one run, the swap's memory lines), and a clear refusal of CUDA without a GPU."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"


def test_gpu_generate_runs_on_cpu_with_the_tiny_model(tmp_path: Path) -> None:
    cmd = [sys.executable, str(BENCH / "gpu_generate.py"), "--device", "cpu", "--tiny", "--work", str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("gpu_generate")]
    assert len(lines) == 6, run.stdout
    assert re.fullmatch(
        r"gpu_generate plain: \d+ tok/s \(4 requests in one batch, \d+ new tokens, [\d.]+s, float32\)", lines[1]
    )
    assert re.match(
        r"gpu_generate static: \d+ tok/s \(\d+ new tokens, [\d.]+s; first call with compile [\d.]+s\)", lines[2]
    )
    # fp32 on CPU: the static cache decodes exactly what plain generate does
    assert re.fullmatch(r"gpu_generate static/plain: [\d.]+x, identical completions 100%", lines[3])
    for line, decode in zip(lines[4:], ("plain", "static")):
        m = re.fullmatch(rf"gpu_generate swap {decode}: RSS (\d+) MiB before load, (\d+) loaded, (\d+) after close "
                         r"\(delta [+-]\d+ MiB\)", line)  # fmt: skip
        assert m, line


def test_gpu_generate_refuses_cuda_without_a_gpu() -> None:
    run = subprocess.run([sys.executable, str(BENCH / "gpu_generate.py")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no CUDA device here" in run.stderr
