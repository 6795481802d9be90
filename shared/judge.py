"""The pairwise judge prompt, shared by the reasoner (training traces) and the evaluator."""

from __future__ import annotations

JUDGE_SYSTEM = "You are an impartial judge of answers about images."


def judge_prompt(instruction: str, response_a: str, response_b: str) -> str:
    return (
        "Look at the image and compare two responses to the question.\n"
        f"Question: {instruction}\n"
        f"[Response A]\n{response_a}\n[Response B]\n{response_b}\n"
        "Explain which response is more accurate about the image, "
        "then give your verdict as [[A]] or [[B]]."
    )


def ordered(preferred: str, rejected: str, order: str) -> tuple[str, str, str]:
    """(response_a, response_b, correct_letter) for order "AB" (preferred first) or "BA"."""
    if order == "AB":
        return preferred, rejected, "A"
    if order == "BA":
        return rejected, preferred, "B"
    raise ValueError(f"order must be AB or BA, not {order!r}")
