"""The tiny offline base model: a stand-in for a pretrained instruct VLM.

Built from a config (no download), then taught scene captioning / question answering and
the judge's output FORMAT. The format lesson carries no information about which response
is right: its verdicts are drawn at random, independent of the responses.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

from selfjudge.shared.judge import JUDGE_SYSTEM, judge_prompt
from selfjudge.shared.models.tiny import build_tiny
from selfjudge.shared.models.training import SFTExample, TrainConfig, sft
from selfjudge.shared.sources.scenes import perturb, pretraining_corpus, tokenizer_corpus
from selfjudge.shared.verdict import format_verdict

log = logging.getLogger(__name__)


def format_examples(corpus: list, rng: random.Random, n: int) -> list[SFTExample]:
    """Judge-format examples: two answers to a scene question and a RANDOM verdict."""
    examples = []
    for image, instruction, answer in rng.sample(corpus, min(n, len(corpus))):
        other, _ = perturb(answer, rng)
        a, b = (answer, other) if rng.random() < 0.5 else (other, answer)
        verdict = rng.choice("AB")          # independent of which answer is right
        reply = f"Response A says: {a} Response B says: {b} {format_verdict(verdict)}"
        examples.append(SFTExample(text=judge_prompt(instruction, a, b), images=[image], answer=reply,
                                   system=JUDGE_SYSTEM))
    return examples


def build_base_model(out_dir: str | Path, seed: int = 0, pretrain_steps: int = 300, arch: str = "qwen2_5_vl",
                     image_size: int = 112, batch_size: int = 8, lr: float = 1e-3, max_objects: int = 5,
                     object_scale: float = 1.0) -> Path:
    """Build the tiny base VLM and teach it the scenes world it will see (`max_objects`, `object_scale`:
    the world's source settings)."""
    out_dir = Path(out_dir)
    raw = out_dir.with_name(out_dir.name + ".init")
    log.info("building a tiny %s from a config (offline)", arch)
    build_tiny(arch, raw, tokenizer_corpus(), seed=seed)
    if pretrain_steps <= 0:
        raw.rename(out_dir)
        return out_dir
    rng = random.Random(seed)
    corpus = pretraining_corpus(seed, max(64, pretrain_steps * batch_size // 2), image_size=image_size,
                                max_objects=max_objects, object_scale=object_scale)
    examples = [SFTExample(text=q, images=[img], answer=a) for img, q, a in corpus]
    examples += format_examples(corpus, rng, len(examples) // 4)
    epochs = max(1, round(pretrain_steps * batch_size / len(examples)))
    log.info("teaching captioning/QA and the judge format: %s examples, %s epochs", len(examples), epochs)
    cfg = TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size, max_length=512, seed=seed)

    def progress(step: int, total: int, loss: float) -> None:
        if step == 1 or step % 25 == 0 or step == total:
            log.info("base model: step %s/%s loss %.3f", step, total, loss)

    sft(str(raw), examples, out_dir, cfg, progress=progress)
    import shutil
    shutil.rmtree(raw, ignore_errors=True)
    return out_dir
