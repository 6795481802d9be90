"""Read the PromQL out of the Grafana dashboards, ready to run against a real Prometheus.

    from promql import dashboard_exprs        # tests/infra is on sys.path (see conftest.py)
    for dashboard, panel, expr in dashboard_exprs():
        requests.get(f"{prom}/api/v1/query", params={"query": expr})

Grafana-only syntax is replaced by plain PromQL: the built-in interval variables
($__rate_interval, $__interval, $__range, ...) by fixed durations, and template variables
($run, ${stage}, [[stage]]) by ".*" (they are only used inside `=~` matchers).

Also here: `metric_names(expr)`, the metric names an expression reads, used to check that
every dashboard uses metrics that selfjudge (shared/metrics.py) or RabbitMQ actually export.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "infra" / "grafana" / "dashboards"

# Grafana's built-in duration variables -> a fixed duration valid for a 5 s scrape interval.
GRAFANA_DURATIONS = {
    "__rate_interval": "30s",
    "__interval": "15s",
    "__range": "1h",
}
# Other Grafana built-ins that may appear in an expression -> a plain value.
GRAFANA_VALUES = {
    "__interval_ms": "15000",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
TEMPLATE_VALUE = ".*"

_VAR = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")


def substitute(expr: str, template_value: str = TEMPLATE_VALUE) -> str:
    """Replace Grafana variables with values Prometheus accepts."""

    def repl(match: re.Match) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name in GRAFANA_DURATIONS:
            return GRAFANA_DURATIONS[name]
        if name in GRAFANA_VALUES:
            return GRAFANA_VALUES[name]
        return template_value

    return _VAR.sub(repl, expr)


def dashboard_files(directory: Path = DASHBOARD_DIR) -> list[Path]:
    return sorted(directory.glob("*.json"))


def _panels(panels: list[dict]):
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_panels(directory: Path = DASHBOARD_DIR) -> list[tuple[str, dict]]:
    """(dashboard title, panel) for every non-row panel of every dashboard."""
    out = []
    for path in dashboard_files(directory):
        dashboard = json.loads(path.read_text())
        for panel in _panels(dashboard.get("panels", [])):
            if panel.get("type") != "row":
                out.append((dashboard["title"], panel))
    return out


def dashboard_exprs(directory: Path = DASHBOARD_DIR, raw: bool = False) -> list[tuple[str, str, str]]:
    """(dashboard title, panel title, expr) for every query target of every panel.

    The expressions have Grafana variables substituted (see `substitute`), unless raw=True.
    """
    out = []
    for title, panel in dashboard_panels(directory):
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            out.append((title, panel.get("title", ""), expr if raw else substitute(expr)))
    return out


# --- metric names in an expression -------------------------------------------------------

PROMQL_KEYWORDS = {
    # aggregation operators and their modifiers
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "atan2",
    # functions
    "abs",
    "absent",
    "absent_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_count",
    "histogram_sum",
    "histogram_fraction",
    "histogram_quantile",
    "histogram_avg",
    "histogram_stddev",
    "histogram_stdvar",
    "holt_winters",
    "double_exponential_smoothing",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "ln",
    "log2",
    "log10",
    "minute",
    "month",
    "predict_linear",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sort_by_label",
    "sort_by_label_desc",
    "sqrt",
    "time",
    "timestamp",
    "vector",
    "year",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "last_over_time",
    "present_over_time",
    "mad_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "cos",
    "cosh",
    "sin",
    "sinh",
    "tan",
    "tanh",
    "deg",
    "rad",
    "pi",
    "inf",
    "nan",
}

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (a small tokenizer, not a full PromQL parser)."""
    text = _STRINGS.sub('""', substitute(expr))
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(r"\1 ", text)
    # Whatever is left and is not a PromQL keyword or function is a metric name. (Numbers
    # and durations never match: an identifier cannot start with a digit.) An unknown
    # function name, i.e. a typo, is reported like an unknown metric.
    return {m.group(1) for m in _IDENT.finditer(text) if m.group(1).lower() not in PROMQL_KEYWORDS}
