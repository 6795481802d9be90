"""Where a model family's chat template puts the assistant answer, read off the template itself.

Qwen renders an assistant turn as `<|im_start|>assistant\\n{answer}<|im_end|>\\n`, Llama 3.2
Vision as `...<|end_header_id|>\\n\\n{answer}<|eot_id|>`, Idefics3 as `Assistant: {answer}<end_of_utterance>\\n`
(the generation prompt stops at `Assistant:`, so the answer starts with a space). Training must
supervise exactly the text the model emits after the generation prompt, up to and including the
turn's end token; generation strips the same prefix back off. `chat_messages` is the one user turn
(images, then text) that generation and training both render through the template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image

SENTINEL = "XQZSENTINELANSWERXQZ"


@dataclass(frozen=True)
class AnswerFormat:
    prefix: str  # text between the generation prompt and the answer ("" for Qwen, " " for Idefics3)
    end_token: str  # the special token that closes the assistant turn
    end_token_id: int


def user_turn(n_images: int, text: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]}
    ]


def chat_messages(text: str, images: list[Image.Image], system: str | None = None) -> list[dict[str, Any]]:
    """One user turn (images first, then text), with an optional system turn before it."""
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    msgs = [{"role": "user", "content": content}]
    if system is not None:
        msgs.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    return msgs


def answer_format(processor: Any) -> AnswerFormat:
    """Render one conversation with and without an assistant turn and diff the two. Cached per processor."""
    cached = getattr(processor, "_selfjudge_answer_format", None)
    if cached is not None:
        return cached
    tok = getattr(processor, "tokenizer", processor)
    msgs = user_turn(0, "Hi")
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(
        msgs + [{"role": "assistant", "content": [{"type": "text", "text": SENTINEL}]}], tokenize=False
    )
    at = full.find(SENTINEL)
    if not full.startswith(prompt) or at < len(prompt):
        raise ValueError("chat template: the generation prompt is not a prefix of the rendered assistant turn")
    prefix = full[len(prompt) : at]
    tail = full[at + len(SENTINEL) :]
    specials = sorted((t for t in tok.all_special_tokens if t and tail.startswith(t)), key=len, reverse=True)
    if specials:
        end = specials[0]
    elif tok.eos_token is not None:
        end = tok.eos_token  # template without an end-of-turn token: the tokenizer's eos
    else:
        raise ValueError("chat template: no special token closes the assistant turn and the tokenizer has no eos")
    fmt = AnswerFormat(prefix=prefix, end_token=end, end_token_id=tok.convert_tokens_to_ids(end))
    try:
        processor._selfjudge_answer_format = fmt
    except AttributeError:  # pragma: no cover - objects that refuse new attributes
        pass
    return fmt
