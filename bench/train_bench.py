"""Trainer throughput: selfjudge's `sft` vs transformers' `Trainer`, same model, data and schedule.

Both start from the same checkpoint folder and the same SFT examples, encoded by the same
`encode_example` (answer-only labels) and batched by the same `collate`; both run AdamW with the
same lr, warmup, cosine schedule, batch size, epochs and gradient clipping, and both write a
checkpoint. Throughput counts the non-padding tokens of every example of every epoch over the
wall time of the whole call (load, encode, train, save). The final models are then scored by the
same answer-token loss over the whole data set: they must agree within 5%.

    python bench/train_bench.py [--examples 64] [--epochs 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import Result, build_model, sft_examples

import torch  # noqa: E402  (after common: torchvision shim)


def answer_loss(model_dir: Path, data: list) -> float:
    """Mean cross-entropy per answer token of a saved model over the whole data set."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from selfjudge.shared.models.training import IGNORE, answer_loss_sum, collate, encode_example

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


def run_ours(model: Path, data: list, out: Path, epochs: int, batch: int, lr: float) -> tuple[float, int]:
    from selfjudge.shared.models.training import TrainConfig, sft

    cfg = TrainConfig(lr=lr, epochs=epochs, batch_size=batch, warmup_ratio=0.03, max_length=1024)
    t0 = time.perf_counter()
    res = sft(str(model), data, out, cfg)
    return time.perf_counter() - t0, res.tokens


def run_hf_trainer(model: Path, data: list, out: Path, epochs: int, batch: int, lr: float) -> float:
    from transformers import AutoModelForImageTextToText, AutoProcessor, Trainer, TrainingArguments

    from selfjudge.shared.models.training import collate, encode_example

    t0 = time.perf_counter()
    proc = AutoProcessor.from_pretrained(model)
    net = AutoModelForImageTextToText.from_pretrained(model, use_safetensors=True)
    enc = [encode_example(proc, ex, 1024) for ex in data]
    pad = proc.tokenizer.pad_token_id
    args = TrainingArguments(
        output_dir=str(out / "hf_tmp"), per_device_train_batch_size=batch, num_train_epochs=epochs,
        learning_rate=lr, warmup_steps=0.03, lr_scheduler_type="cosine", weight_decay=0.0, max_grad_norm=1.0,
        logging_steps=10**6, save_strategy="no", report_to=[], seed=0, data_seed=0, dataloader_num_workers=0,
        remove_unused_columns=False, use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=net, args=args, train_dataset=enc, data_collator=lambda feats: collate(feats, pad))
    trainer.train()
    trainer.save_model(str(out))
    proc.save_pretrained(out)
    return time.perf_counter() - t0


def compare(work: Path, n_examples: int = 64, epochs: int = 1, batch: int = 4, lr: float = 5e-4) -> list[Result]:
    model = build_model(work / "model")
    data = sft_examples(n_examples)
    t_hf = run_hf_trainer(model, data, work / "hf", epochs, batch, lr)
    t_ours, tokens = run_ours(model, data, work / "ours", epochs, batch, lr)
    l_hf, l_ours = answer_loss(work / "hf", data), answer_loss(work / "ours", data)
    same = abs(l_ours - l_hf) <= 0.05 * l_hf
    ratio = (tokens / t_ours) / (tokens / t_hf)
    detail = (f"{tokens} tokens: sft {tokens / t_ours:.0f} tok/s ({t_ours:.1f}s), Trainer {tokens / t_hf:.0f} tok/s "
              f"({t_hf:.1f}s); final loss {l_ours:.4f} vs {l_hf:.4f} ({'within' if same else 'NOT within'} 5%)")  # fmt: skip
    r = Result("train_tokens_per_s_vs_hf_trainer", ratio, 1.2, detail)
    r.loss_ok = same  # type: ignore[attr-defined]
    return [r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        for r in compare(Path(tmp), args.examples, args.epochs):
            print(r.line())
            print(f"  {r.detail}")


if __name__ == "__main__":
    main()
