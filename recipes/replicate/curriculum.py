"""The replication's base model: a three-phase curriculum on top of the package's tiny builder.

`selfjudge.basemodel` builds what `model.base: tiny` needs (one phase of QA and the judge-format
lesson). The miniature's base (`miniature.BaseRecipe`) learns more before the loop starts: to see
(closed-ended QA and dense per-cell descriptions), to read a judge prompt's responses back and
compare strings (text only), and a judge-format lesson whose "My answer" is what the model itself
answers. Every phase trains through `selfjudge.basemodel.Phases`, so the training is the package's.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from selfjudge.basemodel import Phases, following_verdict, judge_example, judge_lesson, judge_reasoning
from selfjudge.shared.models.sft.data import SFTExample
from selfjudge.shared.models.tiny import TinySize
from selfjudge.shared.sources.scenes.prompts import LETTERS
from selfjudge.shared.sources.scenes.source import grid_descriptions, pretraining_prompts
from selfjudge.shared.sources.scenes.world import COLOURS, SHAPES
from selfjudge.shared.verdict import format_verdict

log = logging.getLogger(__name__)
# every short answer of the scenes world: numbers, colours, shapes, option letters, relations
ANSWER_WORDS = (
    [str(i) for i in range(10)] + list(COLOURS) + list(SHAPES) + list(LETTERS) + ["left", "right", "above", "below"]
)


def own_answers(
    model: str | Path, prompts: list, batch_size: int = 32, device: str = "cpu", dtype: str = "float32"
) -> list[str | None]:
    """The model's greedy answers to the closed-ended prompts (None for open-ended ones)."""
    from selfjudge.shared.models.generation.backend import ChatRequest, SamplingParams
    from selfjudge.shared.models.generation.transformers_backend import TransformersBackend

    closed = [i for i, (_, p) in enumerate(prompts) if p.kind == "closed"]
    backend = TransformersBackend(str(model), batch_size=batch_size, device=device, dtype=dtype)
    gens = backend.generate(
        [ChatRequest(text=prompts[i][1].instruction, images=[prompts[i][0]]) for i in closed],
        SamplingParams(max_new_tokens=8),
        progress=lambda done, total: log.info("base model: own answers %s/%s", done, total),
    )
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


def build_curriculum_model(
    out_dir: str | Path,
    seed: int = 0,
    pretrain_steps: int = 300,
    image_size: int = 112,
    batch_size: int = 8,
    lr: float = 1e-3,
    max_objects: int = 5,
    object_scale: float = 1.0,
    layout: str = "free",
    perception_steps: int = 0,
    format_share: float = 0.2,
    reading_steps: int = 0,
    reading_lr: float = 1e-3,
    device: str = "cpu",
    size: TinySize | None = None,
    max_examples: int = 0,
    micro_batch_tokens: int = 0,
    answer_batch: int = 32,
    answer_dtype: str = "float32",
) -> Path:
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
    world = dict(image_size=image_size, max_objects=max_objects, object_scale=object_scale, layout=layout)
    phases = Phases(
        out_dir, seed=seed, image_size=image_size, size=size, device=device, micro_batch_tokens=micro_batch_tokens
    )

    def distinct(seen: int) -> int:
        """Examples to make for a phase that trains on `seen` (more steps repeat them as epochs)."""
        return min(seen, max_examples) if max_examples > 0 else seen

    seeing = None
    if perception_steps > 0:
        grid = layout == "grid"
        # ~2/3 of the prompts are closed-ended: steps x batch examples, half of them descriptions on a grid
        prompts = pretraining_prompts(seed, distinct(perception_steps * batch_size) * 3 // (4 if grid else 2), **world)
        looking = [
            SFTExample(text=p.instruction, images=[img], answer=p.gold) for img, p in prompts if p.kind == "closed"
        ]
        if grid:
            looking += [
                SFTExample(text=q, images=[img], answer=a)
                for img, q, a in grid_descriptions(seed, len(looking), image_size, max_objects, object_scale)
            ]
            random.Random(seed).shuffle(looking)
        seeing = phases.train(
            "closed-ended QA" + (" and cell descriptions" if grid else ""), perception_steps, looking, lr, batch_size
        )
    if reading_steps > 0:
        prompts = pretraining_prompts(seed, 200, **world)
        reading = reading_examples(prompts, random.Random(seed), distinct(reading_steps * batch_size * 2))
        phases.train("reading back and comparing (text only)", reading_steps, reading, reading_lr, batch_size * 2)
    if pretrain_steps > 0:
        rng = random.Random(seed)
        prompts = pretraining_prompts(
            seed + 1 if perception_steps > 0 else seed, max(64, distinct(pretrain_steps * batch_size) // 2), **world
        )
        # after a perception phase the lesson states what the model itself answers, not the gold answer
        own = (
            own_answers(seeing, prompts, batch_size=answer_batch, device=device, dtype=answer_dtype)
            if seeing is not None
            else None
        )
        examples = judge_lesson(prompts, rng, format_share, own)
        if reading_steps > 0:
            examples += reading_examples(prompts, rng, len(examples) // 10)
        phases.train("captioning/QA and the judge format", pretrain_steps, examples, lr, batch_size)
    return phases.finish()
