"""The tiny offline base model: a stand-in for a pretrained instruct VLM.

Built from a config (no download), then taught scene captioning / question answering, to read
a judge prompt's responses back and compare strings (text only), and the judge's output FORMAT.
The format lesson carries no information about which response is right: its "My answer" is the
model's own answer (or a random one), never the gold one, and its verdict follows that answer (the
response that says it; a coin flip when neither does, and for captions, whose own answer is gold).
"""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path

from selfjudge.shared.judge import JUDGE_SYSTEM, judge_prompt
from selfjudge.shared.models.sft.config import TrainConfig
from selfjudge.shared.models.sft.data import SFTExample
from selfjudge.shared.models.sft.loop import sft
from selfjudge.shared.models.tiny import TinySize, build_tiny
from selfjudge.shared.sources.scenes import (
    COLOURS, LETTERS, SHAPES, grid_descriptions, perturb, pretraining_prompts, tokenizer_corpus, wrong_answer,
)
from selfjudge.shared.verdict import format_verdict

log = logging.getLogger(__name__)
# every short answer of the scenes world: numbers, colours, shapes, option letters, relations
ANSWER_WORDS = [str(i) for i in range(10)] + list(COLOURS) + list(SHAPES) + list(LETTERS) + \
    ["left", "right", "above", "below"]


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


_REASONING = re.compile(r"Response A says: (.*?)\. Response B says: (.*?)\. My answer: (.*?), "
                        f"({'|'.join(map(re.escape, CLAUSES.values()))})\\.")
_LETTER = {clause: letter for letter, clause in CLAUSES.items()}


def parse_reasoning(text: str) -> tuple[str, str, str, str] | None:
    """(response A, response B, own answer, agreeing letter "A"/"B"/"-") read back from a judge output in
    the `judge_reasoning` format for short answers; None when the output is not in that format."""
    m = _REASONING.search(text)
    if m is None:
        return None
    a, b, own, clause = m.groups()
    return a, b, own, _LETTER[clause]


def judge_requests(pairs: list) -> tuple[list, list[tuple]]:
    """The judge's prompt for each labelled pair in both orders: (requests, (pair, a, b, right letter))."""
    from selfjudge.shared.models.generation.backend import ChatRequest

    requests, shown = [], []
    for p in pairs:
        for a, b, right in ((p.preferred, p.rejected, "A"), (p.rejected, p.preferred, "B")):
            requests.append(ChatRequest(text=judge_prompt(p.instruction, a, b), images=[p.image], system=JUDGE_SYSTEM))
            shown.append((p, a, b, right))
    return requests, shown


def base_skills(model: str | Path, pairs: list, batch_size: int = 32, device: str = "cpu",
                dtype: str = "float32") -> dict[str, dict[str, float | int]]:
    """What the judge needs and the base model can (not) do, per closed question type, on labelled
    held-out pairs (evaluation only): `qa` answers the plain question right; in the judge's prompt
    (both orders, greedy), `format` writes the reasoning format, `restates` copies both responses,
    `own_right` gives the right answer itself, `agrees_own` names the response that says its own
    answer (the string comparison), `agrees_right` names the right response, `verdict_a` says [[A]]."""
    from selfjudge.shared.models.generation.backend import ChatRequest, SamplingParams
    from selfjudge.shared.models.generation.transformers_backend import TransformersBackend
    from selfjudge.shared.verdict import parse_verdict

    closed = [p for p in pairs if p.question_type in ("count", "colour", "choice", "position")]
    backend = TransformersBackend(str(model), batch_size=batch_size, device=device, dtype=dtype)
    answers = backend.generate([ChatRequest(text=p.instruction, images=[p.image]) for p in closed],
                               SamplingParams(max_new_tokens=8))
    requests, shown = judge_requests(closed)
    judged = backend.generate(requests, SamplingParams(max_new_tokens=64),
                              progress=lambda done, total: log.info("base skills: %s/%s judge prompts", done, total))
    counts: dict[str, dict[str, int]] = {}
    for p, gen in zip(closed, answers):
        c = counts.setdefault(p.question_type, dict.fromkeys(
            ["qa", "format", "restates", "own_right", "agrees_own", "agrees_right", "verdict_a", "pairs"], 0))
        c["qa"] += gen.texts[0].strip() == p.preferred
        c["pairs"] += 1
    for (p, a, b, right), gen in zip(shown, judged):
        c, text = counts[p.question_type], gen.texts[0]
        c["verdict_a"] += parse_verdict(text).choice == "A"
        parsed = parse_reasoning(text)
        if parsed is None:
            continue
        said_a, said_b, own, letter = parsed
        c["format"] += 1
        c["restates"] += (said_a, said_b) == (a, b)
        c["own_right"] += own == p.preferred
        c["agrees_own"] += letter == agreeing(own, said_a, said_b)
        c["agrees_right"] += letter == right
    return {t: {"pairs": c["pairs"], "qa": c["qa"] / c["pairs"],
                **{k: v / (2 * c["pairs"]) for k, v in c.items() if k not in ("qa", "pairs")}}
            for t, c in sorted(counts.items())}


def format_skills(skills: dict[str, dict[str, float | int]]) -> str:
    keys = ["qa", "format", "restates", "own_right", "agrees_own", "agrees_right", "verdict_a"]
    head = f"{'base model':10} {'pairs':>5} " + " ".join(f"{k:>12}" for k in keys)
    return "\n".join([head, "-" * len(head)] + [
        f"{t:10} {s['pairs']:>5} " + " ".join(f"{100 * s[k]:11.1f}%" for k in keys) for t, s in skills.items()])


def format_examples(prompts: list, rng: random.Random, n: int,
                    own: list[str | None] | None = None) -> list[SFTExample]:
    """Judge-format examples whose verdict follows the judge's own reasoning, never the gold answer:
    the lesson teaches the format (restate the responses, answer the question, say which response
    agrees, give the verdict that follows), not which response is right.

    `own[i]`: the model's own answer to closed-ended prompts[i] (`own_answers`), stated as "My
    answer" and said by response A, response B or neither, a third of the time each; the verdict
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
            verdict = following_verdict(answer, a, b, rng)   # what the model believes, never the gold answer
        elif p.kind == "closed":
            a, b = rng.sample([p.gold, *wrong], 2)
            answer = rng.choice(sorted({a, b, *wrong}))   # no belief given: a random value (format only)
            verdict = following_verdict(answer, a, b, rng)
        else:
            pair = [p.gold, rng.choice(wrong)] if len(wrong) < 2 or rng.random() < 0.5 else rng.sample(wrong, 2)
            a, b = rng.sample(pair, 2)
            answer = p.gold                 # captioning in the judge's prompt (no agreement clause)
            verdict = rng.choice("AB")      # independent of which text is right
        reply = f"{judge_reasoning(answer, a, b, p.kind == 'closed')} {format_verdict(verdict)}"
        examples.append(judge_example(p.instruction, [image], a, b, reply))
    return examples


def gold_judge_examples(prompts: list, rng: random.Random, n: int) -> list[SFTExample]:
    """DIAGNOSTIC ONLY (`selfjudge replicate --ceiling`): never part of the base model or of the loop.

    Judge traces that are right in every part: the own answer is the gold answer, the agreement
    clause names the response that says it, and the verdict names the gold response (closed: gold
    vs a wrong answer; open: the gold text vs a perturbed one), A or B at random. Training the base
    judge on these with the loop's trainer settings tells how far the trainer could take it if
    every kept trace were right: an upper bound on what the loop can teach at that budget."""
    examples = []
    for image, p in prompts:
        if len(examples) == n:
            break
        bad = wrong_answer(p, rng) if p.kind == "closed" else perturb(p.gold, rng)[0]
        if bad == p.gold:    # no wrong value, or no word the perturber could change
            continue
        a, b, right = (p.gold, bad, "A") if rng.random() < 0.5 else (bad, p.gold, "B")
        reply = f"{judge_reasoning(p.gold, a, b, p.kind == 'closed')} {format_verdict(right)}"
        examples.append(judge_example(p.instruction, [image], a, b, reply))
    return examples


def own_answers(model: str | Path, prompts: list, batch_size: int = 32, device: str = "cpu",
                dtype: str = "float32") -> list[str | None]:
    """The model's greedy answers to the closed-ended prompts (None for open-ended ones)."""
    from selfjudge.shared.models.generation.backend import ChatRequest, SamplingParams
    from selfjudge.shared.models.generation.transformers_backend import TransformersBackend

    closed = [i for i, (_, p) in enumerate(prompts) if p.kind == "closed"]
    backend = TransformersBackend(str(model), batch_size=batch_size, device=device, dtype=dtype)
    gens = backend.generate([ChatRequest(text=prompts[i][1].instruction, images=[prompts[i][0]]) for i in closed],
                            SamplingParams(max_new_tokens=8),
                            progress=lambda done, total: log.info("base model: own answers %s/%s", done, total))
    out: list[str | None] = [None] * len(prompts)
    for i, gen in zip(closed, gens):
        out[i] = gen.texts[0].strip() or None
    return out


def reading_examples(prompts: list, rng: random.Random, n: int) -> list[SFTExample]:
    """Instruction following without an image: the judge's prompt with two random short answers and,
    as the reply, the responses restated, a random "own answer" (one of them or another word), which
    response says the same and the verdict that follows (`following_verdict`). Reading the prompt
    back, comparing two strings and concluding from one's own reasoning are skills any instruct model
    has; there is no image and the own answer is random, so nothing here says which response is right."""
    closed = [p for _, p in prompts if p.kind == "closed"]
    examples = []
    for _ in range(n):
        p = rng.choice(closed)
        a, b, c = rng.sample(ANSWER_WORDS, 3)
        mine = rng.choice([a, b, c])
        reply = f"{judge_reasoning(mine, a, b, short=True)} {format_verdict(following_verdict(mine, a, b, rng))}"
        examples.append(judge_example(p.instruction, [], a, b, reply))
    return examples


def build_base_model(out_dir: str | Path, seed: int = 0, pretrain_steps: int = 300, arch: str = "qwen2_5_vl",
                     image_size: int = 112, batch_size: int = 8, lr: float = 1e-3, max_objects: int = 5,
                     object_scale: float = 1.0, layout: str = "free", perception_steps: int = 0,
                     format_share: float = 0.2, reading_steps: int = 0, reading_lr: float = 1e-3,
                     device: str = "cpu", size: TinySize | None = None, max_examples: int = 0,
                     micro_batch_tokens: int = 0, answer_batch: int = 32, answer_dtype: str = "float32") -> Path:
    """Build the tiny base VLM and teach it the scenes world it will see (`image_size`, `max_objects`,
    `object_scale`, `layout`: the world's source settings), training and answering on `device`
    ("cpu", "cuda", ...). `size`: the model's shape (default: the CPU miniature's ~4M parameters).
    `max_examples` > 0 caps the distinct examples of each phase (steps x batch beyond it repeat them as
    epochs: encoding examples costs CPU time on a fast device); `micro_batch_tokens` as in TrainConfig;
    `answer_batch` and `answer_dtype` for the phase-1 model's own answers.

    Up to three phases of supervised training from the random init, all with the vision encoder
    frozen and its projector trained, as LLaVA-style recipes do: its random-init features already
    tell every cell's colour, shape and size apart (a linear probe reads them 100% right), and the
    per-cell description below is learned better frozen (shape 100% vs 90% trained, 900 steps at 3e-4):
    1. `perception_steps` of closed-ended QA only (count, colour, choice, position): short answers,
       so every supervised token is about what is in the image (captions would drown them); for the
       grid layout half the examples describe every cell (`grid_description`: dense perception);
    2. `reading_steps` (at `reading_lr`, batch 2 x batch_size) of restating the responses of a
       judge prompt and comparing strings, text only (`reading_examples`). After perception, not
       before: with reading first, the finished base answered colour questions at chance (0.15; 0.64
       in this order);
    3. `pretrain_steps` of all QA (captions and object lists included) plus the judge-format lesson
       (`format_share` of the examples; with a reading phase, a tenth more are reading examples, so
       the skill is kept). After a perception phase, the lesson's "My answer" is what the phase-1
       model answers (`own_answers`), not the gold answer.
    """
    import shutil

    out_dir = Path(out_dir)
    raw = out_dir.with_name(out_dir.name + ".init")
    log.info("building a tiny %s from a config (offline)", arch)
    build_tiny(arch, raw, tokenizer_corpus(), seed=seed, image_size=image_size, size=size)
    if pretrain_steps <= 0 and perception_steps <= 0 and reading_steps <= 0:
        raw.rename(out_dir)
        return out_dir
    world = dict(image_size=image_size, max_objects=max_objects, object_scale=object_scale, layout=layout)
    done: list[Path] = []

    def train(what: str, steps: int, examples: list[SFTExample], phase_lr: float, batch: int) -> Path:
        phase = len(done) + 1
        source = done[-1] if done else raw
        target = out_dir.with_name(out_dir.name + f".phase{phase}")
        epochs = max(1, round(steps * batch / len(examples)))
        log.info("base model, phase %s: %s, %s examples, %s epochs", phase, what, len(examples), epochs)
        cfg = TrainConfig(lr=phase_lr, epochs=epochs, batch_size=batch, max_length=512, seed=seed, freeze_vision=True,
                          device=device, micro_batch_tokens=micro_batch_tokens)

        def progress(step: int, total: int, loss: float) -> None:
            if step == 1 or step % 25 == 0 or step == total:
                log.info("base model, phase %s: step %s/%s loss %.3f", phase, step, total, loss)

        sft(str(source), examples, target, cfg, progress=progress)
        done.append(target)
        return target

    def distinct(seen: int) -> int:
        """Examples to make for a phase that trains on `seen` (more steps repeat them as epochs)."""
        return min(seen, max_examples) if max_examples > 0 else seen

    seeing = None
    if perception_steps > 0:
        grid = layout == "grid"
        # ~2/3 of the prompts are closed-ended: steps x batch examples, half of them descriptions on a grid
        prompts = pretraining_prompts(seed, distinct(perception_steps * batch_size) * 3 // (4 if grid else 2), **world)
        looking = [SFTExample(text=p.instruction, images=[img], answer=p.gold)
                   for img, p in prompts if p.kind == "closed"]
        if grid:
            looking += [SFTExample(text=q, images=[img], answer=a) for img, q, a in grid_descriptions(
                seed, len(looking), image_size, max_objects, object_scale)]
            random.Random(seed).shuffle(looking)
        seeing = train("closed-ended QA" + (" and cell descriptions" if grid else ""), perception_steps, looking, lr,
                       batch_size)
    if reading_steps > 0:
        prompts = pretraining_prompts(seed, 200, **world)
        reading = reading_examples(prompts, random.Random(seed), distinct(reading_steps * batch_size * 2))
        train("reading back and comparing (text only)", reading_steps, reading, reading_lr, batch_size * 2)
    if pretrain_steps > 0:
        rng = random.Random(seed)
        prompts = pretraining_prompts(seed + 1 if perception_steps > 0 else seed,
                                      max(64, distinct(pretrain_steps * batch_size) // 2), **world)
        examples = [SFTExample(text=p.instruction, images=[img], answer=p.gold) for img, p in prompts]
        # after a perception phase the lesson states what the model itself answers, not the gold answer
        own = own_answers(seeing, prompts, batch_size=answer_batch, device=device,
                          dtype=answer_dtype) if seeing is not None else None
        examples += format_examples(prompts, rng, round(len(examples) * format_share / (1 - format_share)), own)
        if reading_steps > 0:
            examples += reading_examples(prompts, rng, len(examples) // 10)
        train("captioning/QA and the judge format", pretrain_steps, examples, lr, batch_size)
    done[-1].rename(out_dir)
    for folder in [raw, *done[:-1]]:
        shutil.rmtree(folder, ignore_errors=True)
    return out_dir
