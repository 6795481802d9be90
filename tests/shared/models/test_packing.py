"""Padding-free packing gives the padded batch's loss and gradients; the padding share is measured;
over-long examples are dropped and counted; under DDP each rank reads only its own slice."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from selfjudge.shared.config import TrainConfig
from selfjudge.shared.models.sft import varlen
from selfjudge.shared.models.sft.data import IGNORE, SFTExample, collate, encode_example, pack, rope_index
from selfjudge.shared.models.sft.loop import sft
from selfjudge.shared.models.sft.model import answer_loss_sum


def examples(n: int = 8) -> list[SFTExample]:
    """Mixed: with and without an image, one or two images, short and long prompts and answers."""
    colours = ["red", "green", "blue", "yellow"]
    out = []
    for i in range(n):
        c = colours[i % 4]
        images = [Image.new("RGB", (112, 84 + 28 * (i % 2)), c)] * (i % 3)
        out.append(SFTExample(text=f"Which response is right about the {c} circle? " * (1 + i % 3), images=images,
                              answer=f"Response {'AB'[i % 2]} is right: the {c} circle. " * (1 + i % 2) + f"[[{'AB'[i % 2]}]]",
                              system="You are a judge." if i == 5 else None))  # fmt: skip
    return out


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attention", ["sdpa", varlen.NAME])
def test_packed_batch_gives_the_padded_loss_and_gradients(tiny_qwen: Path, attention: str) -> None:
    """sdpa: a block-diagonal mask built from the position ids; varlen: per-example attention."""
    processor = AutoProcessor.from_pretrained(tiny_qwen)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen, use_safetensors=True)
    enc = [encode_example(processor, ex, 1024) for ex in examples(6)]
    padded = collate(enc, processor.tokenizer.pad_token_id)
    packed = pack(enc, rope_index(model))
    assert packed["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in enc))  # no padding at all
    assert padded["input_ids"].numel() > packed["input_ids"].numel()
    assert packed["position_ids"].shape == (4, 1, packed["input_ids"].shape[1])
    assert int((packed["labels"][:, 1:] != IGNORE).sum()) == int((padded["labels"][:, 1:] != IGNORE).sum())

    answer_loss_sum(model, padded).backward()
    ref_loss = float(answer_loss_sum(model, padded).detach())
    ref = _grads(model)
    model.zero_grad(set_to_none=True)
    if attention != "sdpa":
        model.set_attn_implementation(varlen.register())
    loss = answer_loss_sum(model, packed)
    loss.backward()
    got = _grads(model)
    assert float(loss.detach()) == pytest.approx(ref_loss, rel=1e-5)
    assert got.keys() == ref.keys() and len(got) > 10
    worst = max(float((got[k] - ref[k]).abs().max() / (ref[k].abs().max() + 1e-8)) for k in ref)
    assert worst < 1e-4, worst

    # the packed examples really are kept apart: without the per-example positions they would not be
    if attention == "sdpa":
        wrong = {k: v for k, v in packed.items() if k != "position_ids"}
        with torch.no_grad():
            assert abs(float(answer_loss_sum(model, wrong)) - ref_loss) > 1e-3 * ref_loss


def test_packing_leaves_no_padding_and_trains_as_padded(tiny_qwen: Path, tmp_path: Path) -> None:
    base = dict(lr=2e-3, epochs=2, batch_size=4, warmup_ratio=0.0, seed=1, loader_workers=0)
    on = sft(str(tiny_qwen), examples(), tmp_path / "on", TrainConfig(**base, packing="auto"))
    off = sft(str(tiny_qwen), examples(), tmp_path / "off", TrainConfig(**base, packing="off"))
    assert on.meta["packed"] and not off.meta["packed"]
    assert on.padded_tokens == on.tokens  # padding share 0
    assert off.padded_tokens > off.tokens  # padded batches pad
    assert on.tokens == off.tokens and on.steps == off.steps
    assert on.losses == pytest.approx(off.losses, rel=2e-3)
    # the varlen attention (what CUDA runs with FlashAttention; here SDPA per example) trains the same
    vl = sft(str(tiny_qwen), examples(), tmp_path / "vl", TrainConfig(**base, attn_implementation=varlen.NAME))
    assert vl.meta["attention"] == varlen.NAME and on.meta["attention"] == "sdpa"
    assert vl.losses == pytest.approx(on.losses, rel=1e-4)


def test_an_over_long_example_is_dropped_and_counted(tiny_qwen: Path, tmp_path: Path) -> None:
    data = examples(6)
    processor = AutoProcessor.from_pretrained(tiny_qwen)
    lengths = [len(encode_example(processor, ex, 4096)["input_ids"]) for ex in data]
    limit = sorted(lengths)[-2]  # the longest example (the only one above) cannot fit
    long_one = lengths.index(max(lengths))
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=2, warmup_ratio=0.0, max_length=limit, loader_workers=0)
    res = sft(str(tiny_qwen), data, tmp_path / "out", cfg)
    assert [i for i, _ in res.dropped] == [long_one] and "too long" in res.dropped[0][1]
    assert res.meta["examples"] == 5 and res.meta["dropped"] == 1 and res.meta["dropped_reasons"] == {"too long": 1}
    assert res.tokens == sum(n for i, n in enumerate(lengths) if i != long_one)
    saved = json.loads((tmp_path / "out" / "selfjudge_training.json").read_text())
    assert saved["dropped"] == 1


class RecordingExamples:
    """A source that notes which process read which example (a line per read in <dir>/rank-R)."""

    def __init__(self, data: list[SFTExample], folder: Path):
        self.data, self.folder = data, folder

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> SFTExample:
        with open(self.folder / f"rank-{os.environ.get('RANK', '0')}", "a") as f:
            f.write(f"{i}\n")
        return self.data[i]

    def identity(self, i: int) -> str:
        return str(i)


def _rank(rank: int, port: int, model: str, folder: Path, workers: int) -> None:
    os.environ |= {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
    torch.set_num_threads(1)
    cfg = TrainConfig(lr=1e-3, epochs=1, batch_size=2, warmup_ratio=0.0, distributed="ddp", nproc=2,
                      micro_batch_tokens=-1, loader_workers=workers)  # fmt: skip
    sft(model, RecordingExamples(examples(8), folder), folder / "out", cfg)


def test_each_rank_reads_only_its_own_slice(tiny_qwen: Path, tmp_path: Path, free_port) -> None:
    """8 examples, 2 ranks, 4 examples per optimizer step, micro-batches of exactly 2: each rank
    measures its half of the data and encodes only its own micro-batches (in DataLoader workers)."""
    ctx = multiprocessing.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, str(tiny_qwen), tmp_path, 1)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    reads = {r: [int(x) for x in (tmp_path / f"rank-{r}").read_text().split()] for r in range(2)}
    for r in range(2):
        assert len(reads[r]) == 8  # 4 measured + 4 trained, of 8 examples
        assert sorted(reads[r][:4]) == list(range(r, 8, 2))  # the length pass: this rank's slice only
    trained = reads[0][4:] + reads[1][4:]
    assert sorted(trained) == list(range(8))  # every example trained once, by one rank
    assert (tmp_path / "out" / "model.safetensors").exists()
