"""`python -m recipes.replicate`: the replication's command line (run from the repository root, or with
the folder holding `recipes/` on PYTHONPATH after the installed `selfjudge`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from selfjudge.shared.config import ConfigError, load_settings


def settings_list(items: list[str] | None) -> dict:
    """`--set section.key=value` options as nested dicts (values as given; the config coerces them)."""
    overrides: dict = {}
    for item in items or []:
        key, _, value = item.partition("=")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return overrides


def cmd_replicate(args: argparse.Namespace) -> int:
    from selfjudge.shared.config import deep_merge

    from .miniature import PROFILES, BaseRecipe, replicate

    overrides = settings_list(args.set)
    # a bad --set / --base-set fails here, with the config's own message
    load_settings(None, overrides=deep_merge(PROFILES[args.profile].loop, overrides))
    base_settings = dict(item.partition("=")[::2] for item in args.base_set or [])
    try:
        BaseRecipe().with_settings(base_settings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    summary = replicate(
        Path(args.out),
        args.iterations,
        tuple(args.arms),
        args.base_steps,
        overrides,
        base=Path(args.base) if args.base else None,
        perception_steps=args.perception_steps,
        ceiling=args.ceiling,
        profile=args.profile,
        reading_steps=args.reading_steps,
        base_settings=base_settings,
        deadline=args.deadline,
    )
    return 1 if summary["errors"] or (summary.get("ceiling") or {}).get("error") else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m recipes.replicate",
        description="the method in miniature: base model, loop, held-out table and plot",
    )
    p.add_argument("--out", default=".selfjudge/replicate", help="output folder (base model, runs, plot, JSON)")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument(
        "--profile",
        choices=["cpu", "gpu"],
        default="cpu",
        help="cpu: the 20-minute CPU miniature (make replicate); gpu: a ~27M-parameter model, bf16, "
        "large batches, 1,008 held-out pairs, arms side by side, sized for one H200 in minutes",
    )
    p.add_argument(
        "--arms",
        nargs="*",
        choices=["majority", "gold"],
        default=["majority", "gold"],
        help="closed-ended labels: majority vote (the paper) and/or gold answers (the ablation)",
    )
    p.add_argument(
        "--perception-steps",
        type=int,
        help="base model, phase 1: steps of closed-ended QA (and, for the grid layout, cell descriptions) "
        "(cpu 1400, gpu 800)",
    )
    p.add_argument(
        "--reading-steps",
        type=int,
        help="base model, phase 2: text-only steps of reading back and comparing (cpu 700, gpu 400)",
    )
    p.add_argument(
        "--base-steps",
        type=int,
        help="base model, phase 3: steps of all QA plus the judge-format lesson (cpu 600, gpu 500)",
    )
    p.add_argument(
        "--base-set",
        action="append",
        metavar="key=value",
        help="override one base model setting: batch_size, lr, reading_lr, max_examples, answer_batch, "
        "hidden, layers, heads, kv_heads, intermediate, vision_depth, ... "
        "(recipes.replicate.miniature.BaseRecipe)",
    )
    p.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="stop the arms still running this many seconds after the start; what they measured is kept",
    )
    p.add_argument("--base", help="an existing base model folder to use instead of building one")
    p.add_argument(
        "--ceiling",
        type=int,
        default=0,
        metavar="N",
        help="diagnostic: train the base judge on N gold judge traces with the loop's trainer settings "
        "and score it on the held-out pairs (what the loop could reach at best); 0 = skip",
    )
    p.add_argument("--set", action="append", metavar="section.key=value", help="override one loop setting")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return cmd_replicate(args)
    except ConfigError as exc:
        print(f"replicate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
