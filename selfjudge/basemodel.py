"""The tiny offline base model: a stand-in for a pretrained instruct VLM (`model.base: tiny`).

Built from a config (no download), then taught scene captioning / question answering and the judge's
output FORMAT. The format lesson carries no information about which response is right: its "My
answer" is the model's own answer (or a random one), never the gold one, and its verdict follows that
answer (the response that says it; a coin flip when neither does, and for captions, whose own answer
is gold).

This is what `selfjudge run`, `make demo` and the tests build. The replication's longer curriculum
(perception and reading phases, own answers in the lesson, the base skills diagnostics) is the
recipe in `recipes/replicate/`, outside the installed package; it trains through `Phases` below.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

from selfjudge.shared.config import TrainConfig
from selfjudge.shared.judge import JUDGE_SYSTEM, judge_prompt
from selfjudge.shared.models.sft.data import SFTExample
from selfjudge.shared.models.sft.loop import sft
from selfjudge.shared.models.tiny import TinySize, build_tiny
from selfjudge.shared.sources.scenes.errors import wrong_answer
from selfjudge.shared.sources.scenes.source import pretraining_prompts, tokenizer_corpus
from selfjudge.shared.verdict import format_verdict

log = logging.getLogger(__name__)


# the agreement clause of the judge's reasoning, by the letter of the response it names ("-": neither)
CLAUSES = {"A": "as Response A says", "B": "as Response B says", "-": "which neither response says"}


def agreeing(own: str, a: str, b: str) -> str:
    """The letter of the response that says what the judge answered ("-": neither): a plain string comparison."""
    return "A" if own == a else "B" if own == b else "-"


def agreement(own: str, a: str, b: str) -> str:
    """The agreement clause for the judge's own answer `own` and responses `a`, `b`."""
    return CLAUSES[agreeing(own, a, b)]


def judge_example(instruction: str, images: list, a: str, b: str, reply: str) -> SFTExample:
    """A training example in the judge's prompt (system prompt included) with `reply` as the answer."""
    return SFTExample(text=judge_prompt(instruction, a, b), images=images, answer=reply, system=JUDGE_SYSTEM)


def following_verdict(own: str, a: str, b: str, rng: random.Random) -> str:
    """The verdict that follows the judge's own reasoning: the response that says its own answer, a
    coin flip when neither does. A procedure on strings, as any instruct model's verdict follows its
    reasoning; what it prefers is only ever what the judge itself answered."""
    letter = agreeing(own, a, b)
    return letter if letter != "-" else rng.choice("AB")


def judge_reasoning(own: str, a: str, b: str, short: bool) -> str:
    """The judge's reasoning in the format the base model is taught, without the verdict: for short
    answers, what each response says, the judge's own answer and which response says the same; for
    long ones (captions, object lists) the own answer alone."""
    if not short:
        return f"My answer: {own}"
    return f"Response A says: {a}. Response B says: {b}. My answer: {own}, {agreement(own, a, b)}."


def format_examples(prompts: list, rng: random.Random, n: int, own: list[str | None] | None = None) -> list[SFTExample]:
    """Judge-format examples whose verdict follows the judge's own reasoning, never the gold answer:
    the lesson teaches the format (restate the responses, answer the question, say which response
    agrees, give the verdict that follows), not which response is right.

    `own[i]`: the model's own answer to closed-ended prompts[i] (the replication's `own_answers`),
    stated as "My answer" and said by response A, response B or neither, a third of the time each; the verdict
    names the response that says it (`following_verdict`; a coin flip when neither does), so the
    lesson carries no information beyond what the model already believes. Without `own`, a random
    one of the candidate answers (format only). Open-ended prompts state the
    gold caption / object list, with no agreement clause and a RANDOM verdict (the caption is gold, so
    no verdict may follow from it). The two responses are two different values drawn from the gold
    answer and wrong ones (open-ended: the gold text and a perturbed one, or two perturbed ones, half
    and half), so copying a response is no way to the own answer."""
    examples = []
    for i in rng.sample(range(len(prompts)), min(n, len(prompts))):
        image, p = prompts[i]
        wrong = sorted({wrong_answer(p, rng) for _ in range(8)} - {p.gold})
        if not wrong:
            continue
        if p.kind == "closed" and own and own[i]:
            # the model's belief, said by response A, by response B or by neither, a third of the time
            # each, whatever the question type (drawn from gold and wrong values, colour questions
            # would rarely show it and teach "neither" as a prior); the other values are the rest
            answer = own[i]
            others = sorted({p.gold, *wrong} - {answer})
            rng.shuffle(others)
            a, b = rng.choice([(answer, others[0]), (others[0], answer)] + [tuple(others[:2])] * (len(others) > 1))
            verdict = following_verdict(answer, a, b, rng)  # what the model believes, never the gold answer
        elif p.kind == "closed":
            a, b = rng.sample([p.gold, *wrong], 2)
            answer = rng.choice(sorted({a, b, *wrong}))  # no belief given: a random value (format only)
            verdict = following_verdict(answer, a, b, rng)
        else:
            pair = [p.gold, rng.choice(wrong)] if len(wrong) < 2 or rng.random() < 0.5 else rng.sample(wrong, 2)
            a, b = rng.sample(pair, 2)
            answer = p.gold  # captioning in the judge's prompt (no agreement clause)
            verdict = rng.choice("AB")  # independent of which text is right
        reply = f"{judge_reasoning(answer, a, b, p.kind == 'closed')} {format_verdict(verdict)}"
        examples.append(judge_example(p.instruction, [image], a, b, reply))
    return examples


def judge_lesson(
    prompts: list, rng: random.Random, format_share: float, own: list[str | None] | None = None
) -> list[SFTExample]:
    """Every prompt's plain QA example (captions and object lists included) plus judge-format
    examples (`format_examples`), `format_share` of the whole."""
    examples = [SFTExample(text=p.instruction, images=[img], answer=p.gold) for img, p in prompts]
    return examples + format_examples(prompts, rng, round(len(examples) * format_share / (1 - format_share)), own)


class Phases:
    """The phases of one base model build, each a supervised training from the last one's output (the
    first from the random init built here), the vision encoder frozen and its projector trained, as
    LLaVA-style recipes do. Each phase writes `<out_dir>.phase<N>`; `finish` renames the last to
    `out_dir` and removes the rest."""

    def __init__(
        self,
        out_dir: str | Path,
        seed: int = 0,
        arch: str = "qwen2_5_vl",
        image_size: int = 112,
        size: TinySize | None = None,
        device: str = "cpu",
        micro_batch_tokens: int = 0,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.seed, self.device, self.micro_batch_tokens = seed, device, micro_batch_tokens
        self.raw = self.out_dir.with_name(self.out_dir.name + ".init")
        self.done: list[Path] = []
        log.info("building a tiny %s from a config (offline)", arch)
        build_tiny(arch, self.raw, tokenizer_corpus(), seed=seed, image_size=image_size, size=size)

    def train(self, what: str, steps: int, examples: list[SFTExample], lr: float, batch: int) -> Path:
        """One phase: `steps` optimizer steps of `batch` (the examples repeated as epochs); its folder."""
        phase = len(self.done) + 1
        source = self.done[-1] if self.done else self.raw
        target = self.out_dir.with_name(self.out_dir.name + f".phase{phase}")
        epochs = max(1, round(steps * batch / len(examples)))
        log.info("base model, phase %s: %s, %s examples, %s epochs", phase, what, len(examples), epochs)
        cfg = TrainConfig(
            lr=lr,
            epochs=epochs,
            batch_size=batch,
            max_length=512,
            seed=self.seed,
            freeze_vision=True,
            device=self.device,
            micro_batch_tokens=self.micro_batch_tokens,
            save_every=0,
        )

        def progress(step: int, total: int, loss: float) -> None:
            if step == 1 or step % 25 == 0 or step == total:
                log.info("base model, phase %s: step %s/%s loss %.3f", phase, step, total, loss)

        sft(str(source), examples, target, cfg, progress=progress)
        self.done.append(target)
        return target

    def finish(self) -> Path:
        """The last phase's model (the random init when no phase ran) as `out_dir`."""
        if not self.done:
            self.raw.rename(self.out_dir)
            return self.out_dir
        self.done[-1].rename(self.out_dir)
        for folder in [self.raw, *self.done[:-1]]:
            shutil.rmtree(folder, ignore_errors=True)
        return self.out_dir


def build_base_model(
    out_dir: str | Path,
    seed: int = 0,
    pretrain_steps: int = 300,
    arch: str = "qwen2_5_vl",
    image_size: int = 112,
    batch_size: int = 8,
    lr: float = 1e-3,
    max_objects: int = 5,
    object_scale: float = 1.0,
    layout: str = "free",
    format_share: float = 0.2,
    device: str = "cpu",
) -> Path:
    """Build the tiny base VLM and teach it the scenes world it will see (`image_size`, `max_objects`,
    `object_scale`, `layout`: the world's source settings), training on `device` ("cpu", "cuda", ...):
    `pretrain_steps` of all QA (captions and object lists included) plus the judge-format lesson
    (`format_share` of the examples, `judge_lesson`), from the random init; none: the random init."""
    phases = Phases(out_dir, seed=seed, arch=arch, image_size=image_size, device=device)
    if pretrain_steps > 0:
        world = dict(image_size=image_size, max_objects=max_objects, object_scale=object_scale, layout=layout)
        prompts = pretraining_prompts(seed, max(64, pretrain_steps * batch_size // 2), **world)
        phases.train(
            "captioning/QA and the judge format",
            pretrain_steps,
            judge_lesson(prompts, random.Random(seed), format_share),
            lr,
            batch_size,
        )
    return phases.finish()
