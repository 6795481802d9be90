"""Trainer throughput: selfjudge's `sft` vs transformers' `Trainer`, same model, data and schedule.

Both start from the same checkpoint folder and the same SFT examples, encoded by the same
`encode_example` (answer-only labels) and batched by the same `collate`; both run AdamW with the
same lr, warmup, cosine schedule, batch size and gradient clipping for one epoch, and both write
a checkpoint. The Trainer reads the examples in the order of sft's (random) optimizer steps with
its sequential sampler, so both take the same steps over the same example sets (sft cuts each
step into length-sorted micro-batches, which changes the padding, not the gradient), and the
final-loss check compares optimizers, not shuffles. Throughput counts the non-padding tokens of
every example over the wall time of the whole call (load, encode, train, save); the two run
alternately, `repeats` times each, and each keeps its best time (the machine is shared). The
final models are scored by the same answer-token loss over the whole data set: within 5%.

    python bench/train_bench.py [--examples 64] [--epochs 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import Result, build_model, sft_examples


def answer_loss(model_dir: Path, data: list) -> float:
    """Mean cross-entropy per answer token of a saved model over the whole data set."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from selfjudge.shared.models.sft.data import IGNORE, collate, encode_example
    from selfjudge.shared.models.sft.model import answer_loss_sum

    proc = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, use_safetensors=True).eval()
    enc = [encode_example(proc, ex, 1024) for ex in data]
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(enc), 8):
            batch = collate(enc[i : i + 8], proc.tokenizer.pad_token_id)
            total += float(answer_loss_sum(model, batch))
            n += int((batch["labels"][:, 1:] != IGNORE).sum())
    return total / n


def config(batch: int, lr: float):
    from selfjudge.shared.config import TrainConfig

    return TrainConfig(lr=lr, epochs=1, batch_size=batch, warmup_ratio=0.03, max_length=1024)


def run_ours(model: Path, data: list, out: Path, batch: int, lr: float):
    from selfjudge.shared.models.sft.loop import sft

    t0 = time.perf_counter()
    res = sft(str(model), data, out, config(batch, lr))
    return time.perf_counter() - t0, res


def padded_share(model: Path, data: list, batch: int) -> float:
    """Padding share of the Trainer's batches (batch examples in order, right-padded to the longest)."""
    from transformers import AutoProcessor

    from selfjudge.shared.models.sft.data import encode_example

    proc = AutoProcessor.from_pretrained(model)
    lengths = [len(encode_example(proc, ex, 1024)["input_ids"]) for ex in data]
    padded = sum(len(lengths[i : i + batch]) * max(lengths[i : i + batch]) for i in range(0, len(lengths), batch))
    return 1 - sum(lengths) / padded


def step_order(model: Path, data: list, batch: int, lr: float) -> list[int]:
    """The example order of sft's optimizer steps (one epoch), flattened."""
    from transformers import AutoProcessor

    from selfjudge.shared.models.sft.data import encode_example
    from selfjudge.shared.models.sft.loop import step_plan

    proc = AutoProcessor.from_pretrained(model)
    lengths = [len(encode_example(proc, ex, 1024)["input_ids"]) for ex in data]
    return [i for step in step_plan(lengths, config(batch, lr)) for i in sorted(i for mb in step for i in mb)]


def run_hf_trainer(model: Path, data: list, out: Path, batch: int, lr: float) -> float:
    from transformers import AutoModelForImageTextToText, AutoProcessor, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from selfjudge.shared.models.sft.data import collate, encode_example

    t0 = time.perf_counter()
    proc = AutoProcessor.from_pretrained(model)
    net = AutoModelForImageTextToText.from_pretrained(model, use_safetensors=True)
    enc = [encode_example(proc, ex, 1024) for ex in data]
    pad = proc.tokenizer.pad_token_id
    args = TrainingArguments(
        output_dir=str(out / "hf_tmp"), per_device_train_batch_size=batch, num_train_epochs=1,
        learning_rate=lr, warmup_steps=0.03, lr_scheduler_type="cosine", weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=10**6, save_strategy="no", report_to=[], seed=0, data_seed=0, dataloader_num_workers=0,
        remove_unused_columns=False, use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
        train_sampling_strategy="sequential",  # `data` comes in sft's step order
    )  # fmt: skip
    trainer = Trainer(model=net, args=args, train_dataset=enc, data_collator=lambda feats: collate(feats, pad))
    trainer.remove_callback(PrinterCallback)  # its end-of-training print would break the one-line-per-result output
    trainer.train()
    trainer.save_model(str(out))
    proc.save_pretrained(out)
    return time.perf_counter() - t0


def compare(work: Path, n_examples: int = 64, batch: int = 4, lr: float = 1e-3, repeats: int = 3) -> list[Result]:
    model = build_model(work / "model")
    data = sft_examples(n_examples)
    ordered = [data[i] for i in step_order(model, data, batch, lr)]
    t_hf = t_ours = float("inf")
    for _ in range(repeats):  # alternate, keep each side's best
        t_hf = min(t_hf, run_hf_trainer(model, ordered, work / "hf", batch, lr))
        t, res = run_ours(model, data, work / "ours", batch, lr)
        t_ours = min(t_ours, t)
    tokens = res.tokens
    share = 1 - res.tokens / res.padded_tokens
    l_hf, l_ours = answer_loss(work / "hf", data), answer_loss(work / "ours", data)
    same = abs(l_ours - l_hf) <= 0.05 * l_hf
    ratio = t_hf / t_ours  # same tokens on both sides
    detail = (f"{n_examples} examples, {tokens} tokens: sft {tokens / t_ours:.0f} tok/s ({t_ours:.1f}s), "
              f"Trainer {tokens / t_hf:.0f} tok/s ({t_hf:.1f}s); final loss {l_ours:.4f} vs {l_hf:.4f} "
              f"({'within' if same else 'NOT within'} 5%)")  # fmt: skip
    pad_detail = (f"sft {'packed' if res.meta['packed'] else 'padded'} micro-batches: {res.padded_tokens - tokens} padding "
                  f"of {res.padded_tokens} input tokens; the Trainer's padded batches of {batch}: "
                  f"{100 * padded_share(model, ordered, batch):.1f}% padding")  # fmt: skip
    return [
        Result("train_tokens_per_s_vs_hf_trainer", ratio, 1.2, detail, extra_ok=same),
        Result("train_padding_share", share, 0.05, pad_detail, at_most=True, percent=True),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        for r in compare(Path(tmp), args.examples):
            print(r.line())
            print(f"  {r.detail}")


if __name__ == "__main__":
    main()
