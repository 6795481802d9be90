"""infra/docker/entrypoint.sh: every replica of a model stage claims its own GPU.

Run with a stand-in for `selfjudge` (SELFJUDGE_EXEC) that prints what it got and, when asked,
holds on for a while like a worker would.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[2] / "infra" / "docker" / "entrypoint.sh"

pytestmark = pytest.mark.skipif(shutil.which("flock") is None or shutil.which("sh") is None,
                                reason="needs sh and flock (util-linux)")

STAND_IN = """#!/bin/sh
echo "CVD=${CUDA_VISIBLE_DEVICES:-unset} ARGS=$*"
if [ -n "${HOLD_FILE:-}" ]; then
    : > "$HOLD_FILE.started"
    while [ -e "$HOLD_FILE" ]; do sleep 0.05; done
fi
"""


@pytest.fixture
def env(tmp_path):
    stand_in = tmp_path / "selfjudge-stand-in"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SELFJUDGE", "CUDA_", "NVIDIA_"))}
    base.update(SELFJUDGE_EXEC=str(stand_in), SELFJUDGE_GPU_LOCK_DIR=str(tmp_path / "locks"),
                SELFJUDGE_GPU_WAIT_S="0")
    return base


def run(env, *args, **extra):
    out = subprocess.run(["sh", str(ENTRYPOINT), *args], env={**env, **extra},
                         capture_output=True, text=True, timeout=30)
    return out.returncode, out.stdout.strip(), out.stderr


def test_no_pool_runs_selfjudge_unchanged(env):
    assert run(env, "worker", "filter") == (0, "CVD=unset ARGS=worker filter", "")


def test_claims_the_first_free_gpu_of_the_pool(env):
    code, out, _ = run(env, "worker", "reasoner", SELFJUDGE_GPU_POOL="reasoner",
                       SELFJUDGE_GPU_IDS="2,5", NVIDIA_VISIBLE_DEVICES="all")
    assert (code, out) == (0, "CVD=2 ARGS=worker reasoner")


def test_replicas_get_distinct_gpus_and_an_extra_one_fails(env, tmp_path):
    pool = {"SELFJUDGE_GPU_POOL": "reasoner", "SELFJUDGE_GPU_IDS": "0,1", "NVIDIA_VISIBLE_DEVICES": "all"}
    holders = []
    try:
        for i in range(2):
            hold = tmp_path / f"hold{i}"
            hold.touch()
            proc = subprocess.Popen(["sh", str(ENTRYPOINT), "worker", "reasoner"],
                                    env={**env, **pool, "HOLD_FILE": str(hold)},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            holders.append((proc, hold))
            deadline = time.monotonic() + 10
            while not Path(f"{hold}.started").exists():
                assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
                time.sleep(0.05)
        code, _, err = run(env, "worker", "reasoner", **pool)
        assert code == 75 and "held by another replica" in err
        # another pool may use the same GPUs
        assert run(env, "worker", "evaluator", SELFJUDGE_GPU_POOL="evaluator", SELFJUDGE_GPU_IDS="0")[:2] == \
            (0, "CVD=0 ARGS=worker evaluator")
    finally:
        outputs = []
        for proc, hold in holders:
            hold.unlink(missing_ok=True)
            outputs.append(proc.communicate(timeout=10)[0].strip())
    assert sorted(outputs) == ["CVD=0 ARGS=worker reasoner", "CVD=1 ARGS=worker reasoner"]
    # the locks went with the processes: the GPU can be claimed again
    assert run(env, "worker", "reasoner", **pool)[:2] == (0, "CVD=0 ARGS=worker reasoner")


def test_subset_visible_is_renumbered(env):
    # device_ids "3,1": CUDA sees host GPUs 1 and 3 as 0 and 1 (PCI bus order)
    code, out, _ = run(env, "worker", "trainer", SELFJUDGE_GPU_POOL="trainer", NVIDIA_VISIBLE_DEVICES="3,1")
    assert (code, out) == (0, "CVD=1 ARGS=worker trainer")
    code, _, err = run(env, "worker", "trainer", SELFJUDGE_GPU_POOL="trainer2",
                       SELFJUDGE_GPU_IDS="7", NVIDIA_VISIBLE_DEVICES="3,1")
    assert code != 0 and "not visible" in err


def test_uuid_and_user_pinning(env):
    assert run(env, "w", SELFJUDGE_GPU_POOL="p", SELFJUDGE_GPU_IDS="GPU-1a2b")[:2] == (0, "CVD=GPU-1a2b ARGS=w")
    assert run(env, "w", SELFJUDGE_GPU_POOL="p", SELFJUDGE_GPU_IDS="0", CUDA_VISIBLE_DEVICES="3")[:2] == \
        (0, "CVD=3 ARGS=w")
