"""Every stage's metrics, scraped by a real Prometheus during the reference run, and every PromQL
expression of every Grafana dashboard panel run against it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("promql", Path(__file__).parents[1] / "infra" / "promql.py")
promql = importlib.util.module_from_spec(spec)
spec.loader.exec_module(promql)

STAGES = ("synthesizer", "reasoner", "filter", "trainer", "evaluator")


def test_every_stage_exported_its_metrics(distributed_run):
    prom, at = distributed_run["prometheus"], distributed_run["scraped_at"]
    up = {r["metric"]["stage"]: r["value"][1] for r in prom.query('up{job="selfjudge"}', at)}
    assert up == {stage: "1" for stage in STAGES}
    items_in = {r["metric"]["stage"]: float(r["value"][1]) for r in prom.query("selfjudge_items_in_total", at)}
    assert set(items_in) >= set(STAGES) and all(v > 0 for v in items_in.values())
    tokens = prom.query("sum by (stage) (selfjudge_generated_tokens_total)", at)
    assert {r["metric"]["stage"] for r in tokens} >= {"synthesizer", "reasoner", "evaluator"}
    assert prom.query("selfjudge_train_steps_total > 0", at)
    accuracy = prom.query('selfjudge_eval_accuracy_ratio{benchmark="heldout",category="overall"}', at)
    assert {r["metric"]["iteration"] for r in accuracy} == {"0", "1", "2"}
    assert prom.query('rabbitmq_queue_messages_ready{queue="reasoner"}', at)


@pytest.mark.parametrize("dashboard, panel, expr", promql.dashboard_exprs())
def test_dashboard_panel_returns_data(distributed_run, dashboard, panel, expr):
    result = distributed_run["prometheus"].query(expr, distributed_run["scraped_at"])
    assert result, f"{dashboard} / {panel}: no data for {expr}"
