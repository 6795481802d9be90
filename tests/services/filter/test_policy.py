"""The filter's rules: consistency (all samples or a share), cap per prompt, A/B balance, holdout."""

import random

import pytest

from selfjudge.services.filter.policy import balance, cap_per_prompt, consistent_pairs, select_traces
from selfjudge.shared.config import FilterConfig
from selfjudge.shared.records import JudgmentRecord
from selfjudge.shared.selection import is_holdout


def j(pair, order, correct, sample=0, holdout=False):
    right = "A" if order == "AB" else "B"
    return JudgmentRecord(
        judgment_id=0,
        pair_id=pair,
        order=order,
        sample=sample,
        image_key="images/x.png",
        prompt_text="",
        output="",
        verdict=right if correct else ("B" if right == "A" else "A"),
        parse_reason="ok",
        correct=correct,
        question_type="count",
        errors=[],
        method="rule_perturb",
        source="scenes",
        prompt_id=pair,
        holdout=holdout,
    )


def key(traces):
    return sorted((t.pair_id, t.order, t.sample) for t in traces)


def test_share_of_samples_instead_of_all():
    js = [
        j(1, "AB", True, 0),
        j(1, "AB", True, 1),
        j(1, "AB", False, 2),
        j(1, "BA", True, 0),
        j(1, "BA", False, 1),
        j(1, "BA", True, 2),
        j(2, "AB", True, 0),
        j(2, "AB", False, 1),
        j(2, "AB", False, 2),
        j(2, "BA", True, 0),
    ]
    assert consistent_pairs(js) == []
    kept = consistent_pairs(js, require_all_samples=False, min_sample_agreement=0.5)
    assert key(kept) == [(1, "AB", 0), (1, "AB", 1), (1, "BA", 0), (1, "BA", 2)]  # the right traces only
    # without the both-orders rule a pair judged in one order only can pass
    assert key(consistent_pairs([j(3, "AB", True)], require_both_orders=False)) == [(3, "AB", 0)]
    assert consistent_pairs([j(3, "AB", True)]) == []


def test_cap_per_prompt_alternates_orders():
    js = [j(1, o, True, s) for s in range(3) for o in ("AB", "BA")]
    assert key(cap_per_prompt(js, 3)) == [(1, "AB", 0), (1, "BA", 0), (1, "BA", 1)]  # odd pair: "BA" first
    assert key(cap_per_prompt(js, 2)) == [(1, "AB", 0), (1, "BA", 0)]
    even = [t.model_copy(update={"pair_id": 2}) for t in js]
    assert key(cap_per_prompt(even, 1)) == [(2, "AB", 0)]
    assert cap_per_prompt(js, 0) == js


def test_balance_drops_the_surplus_label_from_the_fullest_pairs():
    # pair 1: 3 traces "A" (AB) + 1 "B"; pair 2: 1 "A"; pair 3: 1 "B": A=4, B=2 -> two "A" go, from pair 1
    js = [
        j(1, "AB", True, 0),
        j(1, "AB", True, 1),
        j(1, "AB", True, 2),
        j(1, "BA", True, 0),
        j(2, "AB", True, 0),
        j(3, "BA", True, 0),
    ]
    out = balance(js, random.Random(0))
    labels = [t.verdict for t in out]
    assert labels.count("A") == labels.count("B") == 2
    assert sorted(t.pair_id for t in out) == [1, 1, 2, 3]  # both drops from pair 1, no pair lost
    assert (1, "BA", 0) in key(out)


def test_balance_is_a_no_op_when_balanced_and_seeded_otherwise():
    js = [j(1, "AB", True), j(1, "BA", True)]
    assert balance(js, random.Random(0)) == js
    lopsided = [j(p, "AB", True) for p in range(6)] + [j(9, "BA", True)]
    a = balance(lopsided, random.Random(5))
    assert a == balance(lopsided, random.Random(5)) and len(a) == 2


def test_holdout_is_deterministic_and_never_kept():
    ids = [f"scenes:train:{i}:count" for i in range(2000)]
    share = sum(is_holdout(i, 0.1) for i in ids) / len(ids)
    assert 0.07 < share < 0.13
    assert [is_holdout(i, 0.1) for i in ids[:50]] == [is_holdout(i, 0.1) for i in ids[:50]]
    assert not any(is_holdout(i, 0.0) for i in ids) and all(is_holdout(i, 1.0) for i in ids)
    js = [j(1, "AB", True, holdout=True), j(1, "BA", True, holdout=True), j(2, "AB", True), j(2, "BA", True)]
    assert {t.pair_id for t in select_traces(js, FilterConfig(), random.Random(0))} == {2}


@pytest.mark.parametrize(
    "cfg, expected",
    [
        (FilterConfig(), 4),  # pairs 1 and 2, every sample right
        (FilterConfig(max_per_prompt=1, balance=False), 2),  # pair 1 gives "B" (BA), pair 2 "A" (AB)
        (FilterConfig(max_per_prompt=1), 2),  # ... so the cap keeps the balance
        (FilterConfig(require_all_samples=False, balance=False), 7),  # + pair 3: AB 2/2, BA 1/2 right
        (FilterConfig(require_all_samples=False), 6),  # A 4, B 3 -> one "A" of pair 3 goes
    ],
)
def test_select_traces(cfg, expected):
    js = [
        j(1, "AB", True, 0),
        j(1, "BA", True, 0),
        j(2, "AB", True, 0),
        j(2, "BA", True, 0),
        j(3, "AB", True, 0),
        j(3, "AB", True, 1),
        j(3, "BA", True, 0),
        j(3, "BA", False, 1),
    ]
    out = select_traces(js, cfg, random.Random(0))
    assert len(out) == expected
    if cfg.balance:
        labels = [t.verdict for t in out]
        assert labels.count("A") == labels.count("B")
