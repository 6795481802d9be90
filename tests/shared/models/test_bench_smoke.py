"""Smoke checks of the bench code: the GPU bench's code paths on CPU with the tiny model, and the
`make bench` runner's one-line-per-comparison output (a stub comparison; the real ones take minutes)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"


def test_gpu_bench_runs_on_cpu_with_the_tiny_model(tmp_path: Path) -> None:
    cmd = [sys.executable, str(BENCH / "gpu_bench.py"), "--device", "cpu", "--tiny", "--peak-tflops", "0.5",
           "--work", str(tmp_path), "--profile", "--variants", "vision-varlen,nosuch", "--state", str(tmp_path / "s.json")]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("gpu_bench")]
    assert len(lines) >= 4, run.stdout
    assert re.search(r"gpu_bench train plain: \d+ tok/s, [\d.]+ TFLOPS model, MFU [\d.]+% .*padded", lines[1])
    assert re.search(
        r"gpu_bench train ours: \d+ tok/s, [\d.]+ TFLOPS model, MFU [\d.]+% .*packed.*padding 0.0%", lines[2]
    )
    assert re.search(r"gpu_bench train ratio: [\d.]+x ours/plain tok/s \(target 3x\); ours MFU [\d.]+%", lines[3])
    after = "\n".join(lines[4:])
    assert re.search(
        r"^gpu_bench breakdown plain: mean timed step, CPU clock \d+ ms = data wait \d+ \+ forward/backward",
        after,
        re.M,
    )
    assert re.search(r"^gpu_bench breakdown ours: .*startup \+ warm-up", after, re.M)
    assert re.search(r"^gpu_bench profile ours: .*CPU ops in one step", after, re.M)
    assert re.search(r"^gpu_bench variant vision-varlen: \d+ tok/s, MFU [\d.]+% \([\d.]+x ours defaults", after, re.M)
    assert re.search(r"^gpu_bench breakdown vision-varlen: ", after, re.M)
    assert "gpu_bench variant nosuch: unknown" in after
    assert "generate" in run.stdout.split(lines[3], 1)[1]  # bench/gpu_generate.py's lines, or why not


def test_gpu_bench_refuses_cuda_without_a_gpu() -> None:
    run = subprocess.run([sys.executable, str(BENCH / "gpu_bench.py")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no CUDA device" in run.stderr


def test_bench_runner_prints_one_line_per_comparison(tmp_path: Path) -> None:
    (tmp_path / "stub_bench.py").write_text(
        "from common import Result\n"
        "def compare(work):\n"
        "    return [Result('stub_a', 1.5, 1.2, 'x'), Result('stub_b', 0.5, 1.0, 'y')]\n"
    )
    code = (
        f"import sys; sys.path.insert(0, {str(BENCH)!r}); sys.path.insert(0, {str(tmp_path)!r})\n"
        "import run\n"
        "run.COMPARISONS = {'stub': 'stub_bench'}\n"
        "sys.exit(run.main(sys.argv[1:]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["stub_a: 1.50x (target 1.2x)", "stub_b: 0.50x (target 1x)"]
    strict = subprocess.run([sys.executable, "-c", code, "--strict"], capture_output=True, text=True, timeout=120)
    assert strict.returncode == 1


def test_vllm_bench_compares_on_the_same_engine(tmp_path: Path) -> None:
    """The vLLM line of `make bench` on a few prompts: both sides make the same tokens."""
    from .conftest import require_vllm

    require_vllm()
    code = (
        f"import sys; sys.path.insert(0, {str(BENCH)!r})\n"
        "from pathlib import Path\nimport vllm_bench\n"
        f"r, = vllm_bench.compare(Path({str(tmp_path)!r}), n_requests=4, max_new_tokens=8, rounds=1)\n"
        "print(r.line()); print(r.detail); print('same tokens', r.extra_ok)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"^vllm backend vs plain LLM.generate \(tok/s\): [\d.]+x \(target 0.95x\)$", out.stdout, re.M)
    assert "same tokens True" in out.stdout


def test_pipeline_overhead_replays_the_same_model_calls(tmp_path: Path, tiny_base: Path) -> None:
    """The overhead line: an embedded iteration is recorded, then its model calls are replayed."""
    code = (
        f"import sys; sys.path.insert(0, {str(BENCH)!r})\n"
        "from pathlib import Path\nimport pipeline_bench\n"
        f"r = pipeline_bench.overhead(Path({str(tmp_path)!r}), 16, base=Path({str(tiny_base)!r}))\n"
        "print(r.line()); print(r.detail)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    line, detail = out.stdout.strip().splitlines()[-2:]
    assert re.fullmatch(r"pipeline vs direct model calls \(1 - overhead\): [\d.]+x \(target 0.95x\)", line)
    calls = re.search(r"the same (\d+) generate \+ (\d+) train calls", detail)
    assert calls and int(calls.group(1)) >= 4 and int(calls.group(2)) <= 1, detail


def test_gpu_bench_profile_summary_of_device_kernels() -> None:
    """The CUDA side of the profile lines (GPU busy, kernel kinds, top kernels) on stand-in events."""
    code = (
        f"import sys; sys.path.insert(0, {str(BENCH)!r})\n"
        "from types import SimpleNamespace as E\nfrom torch.autograd import DeviceType\nimport gpu_bench\n"
        "ev = [E(key='aten::mm', count=10, device_type=DeviceType.CPU, self_device_time_total=0),\n"
        "      E(key='sm90_xmma_gemm_bf16', count=10, device_type=DeviceType.CUDA, self_device_time_total=300e3),\n"
        "      E(key='pytorch_flash::flash_fwd_kernel', count=2, device_type=DeviceType.CUDA, self_device_time_total=50e3),\n"
        "      E(key='vectorized_elementwise_kernel', count=100, device_type=DeviceType.CUDA, self_device_time_total=150e3)]\n"
        "class T(list):\n    def table(self, **kw): return 'TABLE ' + kw['sort_by']\n"
        "prof = E(key_averages=lambda: T(ev))\n"
        "print('\\n'.join(gpu_bench.profile_lines(prof, 'ours', 1.0)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    first, top, *tables = out.stdout.strip().splitlines()
    assert first.startswith(
        "gpu_bench profile ours: GPU busy 500 ms in one step = 50% of the timed mean step (1000 ms); "
        "112 kernels (mean 4464 us), 10 CPU ops; kernel ms by kind: matmul 300, other 150, attention 50"
    )
    assert top.startswith("gpu_bench profile ours top kernels: sm90_xmma_gemm_bf16 x10 300.0 ms;")
    assert tables == ["TABLE self_device_time_total", "TABLE self_cpu_time_total"]
