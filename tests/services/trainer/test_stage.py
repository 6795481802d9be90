"""The trainer stage: `train:` config mapping, and a training task killed mid-way that resumes when
redelivered (embedded mode: SQLite, local store, in-process bus)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from selfjudge.services.trainer import stage
from selfjudge.shared import loop
from selfjudge.shared.config import load_settings
from selfjudge.shared.context import make_context
from selfjudge.shared.db import Checkpoint, Iteration, Run, SetAside, Shard, migrate
from selfjudge.shared.queue import LocalBus
from selfjudge.shared.store import get_dir, put_image, put_jsonl


class Crash(RuntimeError):
    pass


def test_train_config_maps_every_key() -> None:
    settings = load_settings(overrides={
        "run": {"seed": 10},
        "model": {"device": "cpu", "dtype": "bfloat16", "max_pixels": 1003520, "min_pixels": 3136},
        "train": {"lr": 2e-5, "epochs": 3, "batch_size": 8, "grad_accum": 2, "method": "lora", "lora_r": 8,
                  "lora_alpha": 16, "lora_dropout": 0.1, "lora_merge": False, "save_every": 7,
                  "distributed": "ddp", "nproc": 2, "lr_scheduler": "linear", "precision": "bf16-mixed",
                  "gradient_checkpointing": True, "weight_decay": 0.01, "micro_batch_tokens": -1,
                  "freeze_vision": True, "packing": "off", "loader_workers": 0,
                  "vision_varlen": True, "compile": True, "kernels": "liger"},
    })  # fmt: skip
    cfg = stage.train_config(settings, iteration=2)
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.grad_accum, cfg.seed) == (2e-5, 3, 8, 2, 12)
    assert (cfg.method, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_merge) == ("lora", 8, 16, 0.1, False)
    assert (cfg.save_every, cfg.distributed, cfg.nproc, cfg.lr_scheduler) == (7, "ddp", 2, "linear")
    assert (cfg.precision, cfg.gradient_checkpointing, cfg.weight_decay) == ("bf16-mixed", True, 0.01)
    assert (cfg.dtype, cfg.device, cfg.micro_batch_tokens, cfg.freeze_vision) == ("bfloat16", "cpu", -1, True)
    assert (cfg.packing, cfg.loader_workers, cfg.max_pixels, cfg.min_pixels) == ("off", 0, 1003520, 3136)
    assert (cfg.vision_varlen, cfg.compile, cfg.kernels) == (True, True, "liger")
    default = stage.train_config(load_settings(), iteration=1)
    assert (default.lr, default.epochs, default.method, default.distributed) == (1e-5, 5, "full", "none")
    assert default.freeze_vision is False


def _png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (112, 112), colour).save(buf, format="PNG")
    return buf.getvalue()


def _setup(tiny_qwen: Path, tmp_path: Path, long_prompt: bool = False, **train) -> tuple:
    """An embedded context with a run, its base checkpoint and one done filter shard of 6 traces
    (with long_prompt, the 4th trace's prompt is longer than train.max_length)."""
    settings = load_settings(overrides={
        "run": {"work_dir": str(tmp_path / "work"), "train_lease_seconds": 0.001},
        "train": {"epochs": 1, "batch_size": 2, "lr": 1e-3, "max_length": 512, "save_every": 1, **train},
    })  # fmt: skip
    migrate(settings.database_url())
    bus = LocalBus()
    ctx = make_context(settings, "trainer", bus)
    with ctx.sessions.begin() as s:
        run = Run(name="t", config={}, iterations=1)
        s.add(run)
        s.flush()
        run_id = run.id
    base_id = loop.register_checkpoint(ctx, run_id, 0, str(tiny_qwen))
    records = []
    for i, colour in enumerate(["red", "green", "blue", "red", "green", "blue"]):
        _, key = put_image(ctx.store, _png(colour))
        text = f"Which response is right about the {colour} circle? ({i})" * (80 if long_prompt and i == 3 else 1)
        records.append({"example_id": 100 + i, "prompt_text": text, "image_key": key,
                        "answer": f"The {colour} circle is right. [[{'AB'[i % 2]}]]"})  # fmt: skip
    put_jsonl(ctx.store, f"runs/{run_id}/iter1/examples/0.jsonl", records)
    with ctx.sessions.begin() as s:
        s.add(Iteration(run_id=run_id, number=1, judge_checkpoint_id=base_id, n_shards=1))
        s.add(Shard(run_id=run_id, iteration=1, stage="filter", index=0, state="done", input_key="x",
                    output_key=f"runs/{run_id}/iter1/examples/0.jsonl"))  # fmt: skip
    task = {"run_id": run_id, "iteration": 1, "judge_checkpoint_id": base_id}
    return settings, ctx, bus, task


def _output(ctx, task: dict) -> Checkpoint:
    with ctx.sessions() as s:
        it = s.scalar(select(Iteration).where(Iteration.run_id == task["run_id"], Iteration.number == 1))
        return s.get(Checkpoint, it.output_checkpoint_id)


def test_redelivered_task_resumes_from_the_last_save(tiny_qwen: Path, tmp_path: Path, monkeypatch) -> None:
    settings, ctx, bus, task = _setup(tiny_qwen, tmp_path)
    run_id, base_id = task["run_id"], task["judge_checkpoint_id"]
    out_dir, resume_dir = stage.work_dirs(settings, run_id, 1)

    real_train = stage.train

    def dies_after_step_2(*args, progress=None, **kw):
        def relay(step: int, total: int, loss: float) -> None:
            progress(step, total, loss)
            if step == 2:
                raise Crash("worker killed mid-training")

        return real_train(*args, progress=relay, **kw)

    monkeypatch.setattr(stage, "train", dies_after_step_2)
    with pytest.raises(Crash):
        stage.handle(task, ctx)
    assert [p.name for p in resume_dir.iterdir()] == ["step-000002"]  # 6 examples / 2 = 3 steps; saved at 2
    assert not bus.pending

    # the failed training gave its lease back, so the retried message trains at once
    with ctx.sessions() as s:
        assert s.scalar(select(Shard.state).where(Shard.run_id == run_id, Shard.stage == "trainer")) == "pending"
    monkeypatch.setattr(stage, "train", real_train)
    stage.handle(task, ctx)  # the retried message
    ckpt = _output(ctx, task)
    assert ckpt.parent_id == base_id and ckpt.uri.startswith("store:")
    assert ckpt.meta["resumed_from_step"] == 2 and ckpt.meta["steps"] == 3 and ckpt.meta["format"] == "full"
    assert ckpt.meta["examples"] == 6 and ckpt.meta["config"]["save_every"] == 1
    assert not resume_dir.exists() and not out_dir.exists()
    assert [stage_ for stage_, _ in bus.pending] == ["evaluator"]
    stored = get_dir(ctx.store, ckpt.uri.split(":", 1)[1], tmp_path / "fetched")
    meta = json.loads((stored / "selfjudge_training.json").read_text())
    assert meta["resumed_from_step"] == 2 and meta["steps"] == 3 and (stored / "model.safetensors").exists()


def test_two_process_lora_adapter_through_the_stage(tiny_qwen: Path, tmp_path: Path) -> None:
    """train.distributed ddp x 2 (torchrun, gloo) and train.method lora with lora_merge false."""
    _, ctx, bus, task = _setup(tiny_qwen, tmp_path, distributed="ddp", nproc=2, method="lora", lora_r=4,
                               lora_merge=False)  # fmt: skip
    stage.handle(task, ctx)
    ckpt = _output(ctx, task)
    assert ckpt.meta["world_size"] == 2 and ckpt.meta["steps"] == 2 and ckpt.meta["format"] == "peft_adapter"
    assert ckpt.meta["base_model"] == ctx.models.local_path(task["judge_checkpoint_id"])
    stored = get_dir(ctx.store, ckpt.uri.split(":", 1)[1], tmp_path / "fetched")
    assert (stored / "adapter_config.json").exists() and not (stored / "model.safetensors").exists()
    assert [stage_ for stage_, _ in bus.pending] == ["evaluator"]


def test_an_over_long_trace_is_dropped_counted_and_shown(tiny_qwen: Path, tmp_path: Path) -> None:
    from selfjudge.services.evaluator.report import collect, render_markdown
    from selfjudge.shared.status import format_table, run_status

    _, ctx, bus, task = _setup(tiny_qwen, tmp_path, long_prompt=True, save_every=0)
    stage.handle(task, ctx)
    ckpt = _output(ctx, task)
    assert ckpt.meta["examples"] == 5 and ckpt.meta["dropped"] == 1 and ckpt.meta["dropped_reasons"] == {"too long": 1}
    with ctx.sessions() as s:
        aside = s.scalars(select(SetAside).where(SetAside.stage == "trainer")).all()
        assert [(a.record_id, a.iteration) for a in aside] == [("example:103", 1)]
        assert aside[0].reason.startswith("too long: ") and "max_length 512" in aside[0].reason
        status = run_status(s, task["run_id"])
        report = collect(s, task["run_id"])
    assert [(i["trained_examples"], i["dropped_examples"]) for i in report["iterations"]] == [(5, 1)]
    assert "| 5 | 1 |" in render_markdown(report, [])
    assert status["iterations"][0]["set_aside_by_stage"]["trainer"] == {"too long": 1}
    assert "set aside by trainer (1): too long 1" in format_table(status)
    value = ctx.metrics.registry.get_sample_value(
        "selfjudge_train_dropped_examples_total", {"run": str(task["run_id"]), "iteration": "1", "reason": "too long"}
    )
    assert value == 1
    assert [stage_ for stage_, _ in bus.pending] == ["evaluator"]
