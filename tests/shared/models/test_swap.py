"""A checkpoint swap shuts the old backend down and returns memory to where it was: the loop's
model cache (shared/context.py) and vLLM's engine, in this process and in its own processes.

On CPU the engine's memory is this process's RSS (vLLM's 1 GiB KV cache, touched at start) and
its child processes; on CUDA the same close() ends in torch.cuda.empty_cache() (bench/gpu_generate.py
prints torch.cuda.memory_allocated before and after on the card). Needs vLLM for the engine tests
(`make vllm`); SELFJUDGE_NO_VLLM=1 skips them."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import psutil

from selfjudge.shared.models.generation.backend import ChatRequest, SamplingParams

from .conftest import require_vllm

MiB = 2**20
KV_CACHE = 1024 * MiB  # kv_cache_gib=1
TOLERANCE = 64 * MiB  # what a swap may leave behind (allocator slack); a leaked KV cache is 16x this


def tree_rss(proc: psutil.Process) -> int:
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def engine_children(proc: psutil.Process, before: set[int]) -> list[psutil.Process]:
    """Child processes started since `before`, but multiprocessing's resource tracker (it stays
    for the life of the process, engine or not)."""
    out = []
    for child in proc.children(recursive=True):
        try:
            if child.pid not in before and "resource_tracker" not in " ".join(child.cmdline()):
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out


def test_model_cache_swap_closes_the_old_backend(tiny_qwen: Path, tmp_path: Path) -> None:
    """ModelCache.backend(new) closes the old backend first: its model is freed at the swap itself."""
    from selfjudge.shared import loop
    from selfjudge.shared.config import load_settings
    from selfjudge.shared.context import make_context
    from selfjudge.shared.db import migrate
    from selfjudge.shared.queue import LocalBus

    settings = load_settings(
        environ={},
        overrides={"run": {"work_dir": str(tmp_path / "work")}, "model": {"batch_size": 2, "hf_decode": "static"}},
    )
    migrate(settings.database_url())
    ctx = make_context(settings, "reasoner", LocalBus())
    first, second = (loop.register_checkpoint(ctx, None, i, str(tiny_qwen)) for i in (0, 1))
    old = ctx.models.backend(first)
    assert old.decode == "static" and ctx.models.backend(first) is old  # kept while the checkpoint stays
    model = weakref.ref(old.model)
    new = ctx.models.backend(second)
    assert new is not old and model() is None and not hasattr(old, "model")
    ctx.models.release()
    assert ctx.models.loaded_id is None and not hasattr(new, "model")


def _engine_round(tiny_qwen: Path, in_process: bool) -> tuple[int, int, int, list[psutil.Process]]:
    """(RSS before, while loaded, after close) of this process and its children, and the engine's
    processes while it ran."""
    from selfjudge.shared.models.generation.backend import close_backend
    from selfjudge.shared.models.generation.load import load_backend

    me = psutil.Process()
    gc.collect()
    kids = {p.pid for p in me.children(recursive=True)}
    before = tree_rss(me)
    be = load_backend(
        "vllm",
        str(tiny_qwen),
        dtype="float32",
        vllm={"max_model_len": 1024, "kv_cache_gib": 1, "in_process": in_process},
    )
    be.generate([ChatRequest(text="What colour is it?", images=[], key="k")], SamplingParams(max_new_tokens=4))
    loaded, procs = tree_rss(me), engine_children(me, kids)
    close_backend(be)
    del be
    gc.collect()
    return before, loaded, tree_rss(me), procs


def test_in_process_engine_swap_returns_memory(tiny_qwen: Path) -> None:
    """Two swaps in a row, as the loop makes them: one in-process engine at a time (a first, unmeasured
    round pays the one-off import costs). No other engine may be live here: see the next test."""
    require_vllm()
    _engine_round(tiny_qwen, in_process=True)
    for _ in range(2):
        before, loaded, after, procs = _engine_round(tiny_qwen, in_process=True)
        assert not procs and loaded - before > KV_CACHE // 2, (before, loaded)  # the cache was really held
        assert after - before < TOLERANCE, f"RSS {before / MiB:.0f} MiB -> {after / MiB:.0f} MiB after close"


def test_engine_processes_end_at_close(tiny_qwen: Path) -> None:
    """in_process=False (vLLM's own engine process): the process is gone and its memory with it."""
    require_vllm()
    before, loaded, after, procs = _engine_round(tiny_qwen, in_process=False)
    assert procs and loaded - before > KV_CACHE // 2
    gone, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    assert after - before < 4 * TOLERANCE, (before / MiB, after / MiB)  # + the resource tracker, once


def test_closing_one_engine_leaves_another_working(vllm_tiny, tiny_qwen: Path) -> None:
    """In-process engines share vLLM's distributed state: closing one while another is live must not
    tear it down under the other (runs after the memory tests: vllm_tiny stays live from here on)."""
    request = [ChatRequest(text="What colour is it?", images=[], key="k")]
    first = vllm_tiny.generate(request, SamplingParams(max_new_tokens=4))
    _engine_round(tiny_qwen, in_process=True)
    assert vllm_tiny.generate(request, SamplingParams(max_new_tokens=4)) == first
