"""The trainer's optional speed-ups (sft/speed.py), their logic on CPU: the vision tower's varlen
route gives the same outputs in one call per block, regional compilation traces the same loss and
gradients, the Liger switch wires its patch and fused loss (a stand-in module: Liger needs CUDA),
and sft's step timer and unwritten runs, as bench/gpu_bench.py uses them."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText, AutoProcessor

from selfjudge.shared.config import TrainConfig
from selfjudge.shared.models.sft import speed, varlen
from selfjudge.shared.models.sft.checkpoint import fingerprint
from selfjudge.shared.models.sft.data import encode_example, pack, rope_index
from selfjudge.shared.models.sft.loop import sft
from selfjudge.shared.models.sft.model import answer_loss_sum

from .test_packing import examples


def _packed(tiny_qwen: Path, n: int = 6) -> tuple:
    processor = AutoProcessor.from_pretrained(tiny_qwen)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen, use_safetensors=True)
    enc = [encode_example(processor, ex, 1024) for ex in examples(n)]
    return model, pack(enc, rope_index(model))


def test_vision_varlen_gives_the_same_vision_output_in_one_call_per_block(tiny_qwen: Path, monkeypatch) -> None:
    model, batch = _packed(tiny_qwen)
    visual = model.model.visual
    pixels, grid = batch["pixel_values"], batch["image_grid_thw"]
    assert len(grid) >= 2  # several images, each cut into windows
    with torch.no_grad():
        ref = visual(pixels, grid_thw=grid).pooler_output
    calls: list[int] = []
    inner = varlen.attention

    def counting(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    monkeypatch.setattr(varlen, "attention", counting)
    assert varlen.use_in_vision(model)
    assert visual.config._attn_implementation == varlen.VISION_NAME
    assert model.config.text_config._attn_implementation != varlen.VISION_NAME  # the text model is left alone
    with torch.no_grad():
        got = visual(pixels, grid_thw=grid).pooler_output
    assert len(calls) == len(visual.blocks)  # one call per block, not one per window or image
    assert torch.equal(got, ref)
    assert not varlen.use_in_vision(torch.nn.Linear(2, 2))  # no Qwen-VL vision tower: nothing to do


def test_sft_with_vision_varlen_trains_the_same_and_times_its_phases(tiny_qwen: Path, tmp_path: Path) -> None:
    base = TrainConfig(lr=2e-3, epochs=1, batch_size=4, warmup_ratio=0.0, seed=1, loader_workers=0)
    ref = sft(str(tiny_qwen), examples(), tmp_path / "ref", base)
    phases: list[str] = []
    got = sft(str(tiny_qwen), examples(), None, base.model_copy(update={"vision_varlen": True}), timer=phases.append)
    assert got.losses == pytest.approx(ref.losses, rel=1e-5)
    assert got.meta["speedups"] == {"vision_attention": varlen.VISION_NAME} and "speedups" not in ref.meta
    assert [p.name for p in tmp_path.iterdir()] == ["ref"]  # out_dir None: nothing written
    # per step: "step", then "data" + "compute" per micro-batch, then "optimizer"
    steps = "".join({"step": "s", "data": "d", "compute": "c", "optimizer": "o"}[p] for p in phases).split("s")[1:]
    assert len(steps) == got.steps and all(s.startswith("dc") and s.endswith("o") and s[:-1] == "dc" * (len(s) // 2)
                                           for s in steps)  # fmt: skip


def test_compiled_blocks_give_the_same_loss_and_gradients(tiny_qwen: Path) -> None:
    """Each decoder layer and vision block compiled (dynamo with the eager backend here: the graph
    capture and the varlen attention's break out of it, not inductor's code)."""
    model, batch = _packed(tiny_qwen)
    model.set_attn_implementation(varlen.register())
    varlen.use_in_vision(model)
    answer_loss_sum(model, batch).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    ref_loss = float(answer_loss_sum(model, batch).detach())
    model.zero_grad(set_to_none=True)
    n = speed.compile_blocks(model, backend="eager")
    cfg = model.config
    assert n == cfg.text_config.num_hidden_layers + cfg.vision_config.depth
    loss = answer_loss_sum(model, batch)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(ref_loss, rel=1e-5)
    worst = max(
        float((p.grad - ref[k]).abs().max() / (ref[k].abs().max() + 1e-8))
        for k, p in model.named_parameters()
        if k in ref
    )
    assert worst < 1e-4
    # without the varlen vision route a Qwen-VL vision block loops over windows: left uncompiled
    fresh, _ = _packed(tiny_qwen, 1)
    assert speed.compile_blocks(fresh, backend="eager") == cfg.text_config.num_hidden_layers
    with pytest.raises(ValueError, match="no decoder layers"):
        speed.compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


class _FakeLiger(types.ModuleType):
    """What speed.py uses of liger_kernel.transformers, in plain torch: the patch is recorded, the
    fused loss is the unfused head + cross-entropy."""

    def __init__(self) -> None:
        super().__init__("liger_kernel.transformers")
        self.patched: list[tuple[object, dict]] = []

    def apply_liger_kernel_to_qwen2_5_vl(self, model: object = None, **kw: bool) -> None:
        self.patched.append((model, kw))

    class LigerFusedLinearCrossEntropyLoss:
        def __init__(self, reduction: str = "mean") -> None:
            self.reduction = reduction

        def __call__(self, weight, x, target, bias=None):
            return F.cross_entropy(F.linear(x, weight, bias).float(), target, reduction=self.reduction)


def test_liger_switch_patches_the_model_and_fuses_the_loss(tiny_qwen: Path, monkeypatch) -> None:
    fake = _FakeLiger()
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    model, batch = _packed(tiny_qwen)
    cfg = TrainConfig(kernels="liger")
    assert speed.apply(model, cfg) == {"kernels": "liger"}
    ((patched, kw),) = fake.patched
    assert patched is model and kw["rms_norm"] and kw["swiglu"] and not kw["fused_linear_cross_entropy"]
    fused = speed.fused_loss(cfg)
    assert fused.reduction == "sum" and speed.fused_loss(TrainConfig()) is None
    with torch.no_grad():
        assert float(answer_loss_sum(model, batch, fused)) == pytest.approx(
            float(answer_loss_sum(model, batch)), rel=1e-6
        )
    model.config.model_type = "mllama"
    with pytest.raises(ValueError, match="no Liger patch"):
        speed.apply_liger(model)


def test_liger_without_its_package_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "liger_kernel", None)  # import fails as if not installed
    with pytest.raises(RuntimeError, match="liger-kernel"):
        speed.fused_loss(TrainConfig(kernels="liger"))


def test_speedup_settings_are_checked_and_leave_the_run_identity_alone(tiny_qwen: Path) -> None:
    with pytest.raises(ValueError, match="kernels"):
        TrainConfig(kernels="apex")
    with pytest.raises(ValueError, match="fsdp"):
        TrainConfig(compile=True, distributed="fsdp")
    data = examples(2)
    plain = fingerprint(str(tiny_qwen), TrainConfig(), data, 1)
    fast = fingerprint(str(tiny_qwen), TrainConfig(vision_varlen=True, compile=True, kernels="liger"), data, 1)
    assert plain == fast  # a run resumes whichever speed-ups it runs with
