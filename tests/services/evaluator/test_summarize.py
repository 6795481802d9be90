import pytest

from selfjudge.services.evaluator.scoring import Judged
from selfjudge.services.evaluator.scoring import summarize_heldout as summarize


def r(item: str, cat: str, order: str, verdict: str | None) -> Judged:
    return Judged(item, cat, order, verdict)


def test_accuracy_both_orders_and_position_bias():
    results = [
        r("1", "count", "AB", "A"),
        r("1", "count", "BA", "B"),  # right both
        r("2", "count", "AB", "A"),
        r("2", "count", "BA", "A"),  # always A
        r("3", "colour", "AB", None),
        r("3", "colour", "BA", "B"),
    ]  # unparseable once
    rows = {(c, m): (v, n) for c, m, v, n in summarize(results)}
    assert rows[("overall", "accuracy")] == (pytest.approx(4 / 6), 6)
    assert rows[("overall", "both_orders")] == (pytest.approx(1 / 3), 3)
    assert rows[("overall", "position_bias")] == (pytest.approx(1 / 3), 3)
    assert rows[("count", "accuracy")] == (pytest.approx(3 / 4), 4)
    assert rows[("colour", "both_orders")] == (0.0, 1)
