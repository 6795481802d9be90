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

pytestmark = pytest.mark.skipif(
    shutil.which("flock") is None or shutil.which("sh") is None, reason="needs sh and flock (util-linux)"
)

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
    base.update(SELFJUDGE_EXEC=str(stand_in), SELFJUDGE_GPU_LOCK_DIR=str(tmp_path / "locks"), SELFJUDGE_GPU_WAIT_S="0")
    return base


def run(env, *args, **extra):
    out = subprocess.run(
        ["sh", str(ENTRYPOINT), *args], env={**env, **extra}, capture_output=True, text=True, timeout=30
    )
    return out.returncode, out.stdout.strip(), out.stderr


def test_no_pool_runs_selfjudge_unchanged(env):
    assert run(env, "worker", "filter") == (0, "CVD=unset ARGS=worker filter", "")


def test_claims_the_first_free_gpu_of_the_pool(env):
    code, out, _ = run(
        env, "worker", "reasoner", SELFJUDGE_GPU_POOL="reasoner", SELFJUDGE_GPU_IDS="2,5", NVIDIA_VISIBLE_DEVICES="all"
    )
    assert (code, out) == (0, "CVD=2 ARGS=worker reasoner")


def test_replicas_get_distinct_gpus_and_an_extra_one_fails(env, tmp_path):
    pool = {"SELFJUDGE_GPU_POOL": "reasoner", "SELFJUDGE_GPU_IDS": "0,1", "NVIDIA_VISIBLE_DEVICES": "all"}
    holders = []
    try:
        for i in range(2):
            hold = tmp_path / f"hold{i}"
            hold.touch()
            proc = subprocess.Popen(
                ["sh", str(ENTRYPOINT), "worker", "reasoner"],
                env={**env, **pool, "HOLD_FILE": str(hold)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            holders.append((proc, hold))
            deadline = time.monotonic() + 10
            while not Path(f"{hold}.started").exists():
                assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
                time.sleep(0.05)
        code, _, err = run(env, "worker", "reasoner", **pool)
        assert code == 75 and "held by another replica" in err
        # another pool may use the same GPUs
        assert run(env, "worker", "evaluator", SELFJUDGE_GPU_POOL="evaluator", SELFJUDGE_GPU_IDS="0")[:2] == (
            0,
            "CVD=0 ARGS=worker evaluator",
        )
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
    code, _, err = run(
        env, "worker", "trainer", SELFJUDGE_GPU_POOL="trainer2", SELFJUDGE_GPU_IDS="7", NVIDIA_VISIBLE_DEVICES="3,1"
    )
    assert code != 0 and "not visible" in err


def test_uuid_and_user_pinning(env):
    assert run(env, "w", SELFJUDGE_GPU_POOL="p", SELFJUDGE_GPU_IDS="GPU-1a2b")[:2] == (0, "CVD=GPU-1a2b ARGS=w")
    assert run(env, "w", SELFJUDGE_GPU_POOL="p", SELFJUDGE_GPU_IDS="0", CUDA_VISIBLE_DEVICES="3")[:2] == (
        0,
        "CVD=3 ARGS=w",
    )


def _hold(env, tmp_path, name, extra):
    """Start the entrypoint with the holding stand-in; return (process, hold file) once it runs."""
    hold = tmp_path / name
    hold.touch()
    proc = subprocess.Popen(
        ["sh", str(ENTRYPOINT), "worker", "trainer"],
        env={**env, **extra, "HOLD_FILE": str(hold)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 10
    while not Path(f"{hold}.started").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    return proc, hold


def test_several_gpus_per_replica_claim_disjoint_groups(env, tmp_path):
    """SELFJUDGE_GPUS_PER_REPLICA=2 over a pool of 5: {4,5} and {6,7} (the fifth id is left over)."""
    pool = {
        "SELFJUDGE_GPU_POOL": "trainer",
        "SELFJUDGE_GPU_IDS": "4,5,6,7,2",
        "SELFJUDGE_GPUS_PER_REPLICA": "2",
        "NVIDIA_VISIBLE_DEVICES": "all",
    }
    holders = []
    try:
        holders = [_hold(env, tmp_path, f"hold{i}", pool) for i in range(2)]
        code, _, err = run(env, "worker", "trainer", **pool)
        assert code == 75 and "held by another replica" in err and "SELFJUDGE_GPUS_PER_REPLICA (2)" in err
    finally:
        outputs = []
        for proc, hold in holders:
            hold.unlink(missing_ok=True)
            outputs.append(proc.communicate(timeout=10)[0].strip())
    assert sorted(outputs) == ["CVD=4,5 ARGS=worker trainer", "CVD=6,7 ARGS=worker trainer"]
    # a subset visible (device_ids 6,7,2,3): the group is renumbered like a single GPU is
    assert run(
        env,
        "w",
        SELFJUDGE_GPU_POOL="t2",
        SELFJUDGE_GPU_IDS="6,7",
        SELFJUDGE_GPUS_PER_REPLICA="2",
        NVIDIA_VISIBLE_DEVICES="6,7,2,3",
    )[:2] == (0, "CVD=2,3 ARGS=w")


def test_gpus_per_replica_is_checked(env):
    code, _, err = run(env, "w", SELFJUDGE_GPU_POOL="t", SELFJUDGE_GPU_IDS="0,1", SELFJUDGE_GPUS_PER_REPLICA="4")
    assert code == 78 and "fewer than SELFJUDGE_GPUS_PER_REPLICA=4" in err
    for bad in ("0", "two", "-1"):
        code, _, err = run(env, "w", SELFJUDGE_GPU_POOL="t", SELFJUDGE_GPU_IDS="0,1", SELFJUDGE_GPUS_PER_REPLICA=bad)
        assert code == 78 and "whole number" in err, bad


RANK_SCRIPT = """import os, sys
line = (f"rank={os.environ['RANK']} local={os.environ['LOCAL_RANK']} world={os.environ['WORLD_SIZE']} "
        f"gpu={os.environ['CUDA_VISIBLE_DEVICES'].split(',')[int(os.environ['LOCAL_RANK'])]}")
with open(os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.txt"), "w") as f:
    f.write(line)
"""


def test_trainer_replica_runs_torchrun_over_its_gpus(env, tmp_path):
    """The trainer's path: the entrypoint claims N GPUs, then the worker starts torchrun with
    --nproc-per-node N (train.nproc, set from the same variable in compose): rank r uses cuda:r,
    which is the r-th GPU of the claimed group."""
    import sys

    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    launcher = tmp_path / "torchrun-stand-in"
    launcher.write_text(f"""#!/bin/sh
exec {sys.executable} -m torch.distributed.run --standalone --nproc-per-node="$SELFJUDGE__TRAIN__NPROC" {script} {tmp_path}
""")
    launcher.chmod(0o755)
    out = subprocess.run(["sh", str(ENTRYPOINT), "worker", "trainer"], capture_output=True, text=True, timeout=120,
                         env={**env, "SELFJUDGE_EXEC": str(launcher), "SELFJUDGE_GPU_POOL": "trainer",
                              "SELFJUDGE_GPU_IDS": "2,3,4,5", "SELFJUDGE_GPUS_PER_REPLICA": "2",
                              "SELFJUDGE__TRAIN__NPROC": "2", "NVIDIA_VISIBLE_DEVICES": "all"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    ranks = sorted(f.read_text() for f in tmp_path.glob("rank*.txt"))
    assert ranks == ["rank=0 local=0 world=2 gpu=2", "rank=1 local=1 world=2 gpu=3"]
    assert "claimed host GPU 2,3 (CUDA_VISIBLE_DEVICES=2,3)" in out.stderr


def test_eight_gpu_layout_replicas_claim_disjoint_gpus(env, tmp_path):
    """Each stage of infra/gpu-8.env as compose renders it: its replicas, started together with the
    stage's environment and the GPUs Docker shows them (NVIDIA_VISIBLE_DEVICES = the reservation's
    device ids), claim disjoint GPUs that cover the pool."""
    from test_compose import _render, gpu_layout

    services = _render("infra/gpu-8.env")
    for stage, (ids, replicas, per, device_ids) in gpu_layout(services).items():
        stage_env = {k: v for k, v in services[stage]["environment"].items() if k.startswith("SELFJUDGE_GPU")}
        stage_env["NVIDIA_VISIBLE_DEVICES"] = ",".join(device_ids)
        holders, outputs = [], []
        try:
            holders = [_hold(env, tmp_path, f"{stage}{i}", stage_env) for i in range(replicas)]
        finally:
            for proc, hold in holders:
                hold.unlink(missing_ok=True)
                outputs.append(proc.communicate(timeout=10)[0].strip())
        visible = sorted(ids.split(","), key=int)  # CUDA numbers the visible GPUs in PCI (= id) order
        claimed = [[visible[int(i)] for i in out.split()[0].removeprefix("CVD=").split(",")] for out in outputs]
        assert all(len(c) == per for c in claimed), (stage, outputs)
        assert sorted(g for c in claimed for g in c) == sorted(ids.split(",")), (stage, outputs)
