"""`selfjudge` command line: build-model, run, worker, status, migrate."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from selfjudge.shared.config import ConfigError, Settings, load_settings

log = logging.getLogger("selfjudge")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict = {}
    for item in getattr(args, "set", None) or []:
        key, _, value = item.partition("=")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return load_settings(args.config, overrides=overrides)


def resolve_base_model(settings: Settings) -> str:
    """`tiny` builds (once, cached under work_dir) the offline base model; anything else is used as is."""
    if settings.model.base != "tiny":
        return settings.model.base
    from selfjudge.basemodel import build_base_model

    steps = settings.model.tiny_pretrain_steps
    folder = Path(settings.run.work_dir).resolve() / "models" / f"tiny-seed{settings.run.seed}-steps{steps}"
    if not (folder / "config.json").exists():
        build_base_model(folder, seed=settings.run.seed, pretrain_steps=steps,
                         image_size=settings.source.image_size)
    return str(folder)


def cmd_build_model(args: argparse.Namespace) -> int:
    from selfjudge.basemodel import build_base_model

    out = build_base_model(args.out, seed=args.seed, pretrain_steps=args.pretrain_steps, arch=args.arch)
    print(out)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from selfjudge.shared.db import migrate

    settings = _settings(args)
    migrate(settings.database_url())
    print("schema up to date")
    return 0


def stage_handlers(settings: Settings, bus, metrics, sessions, store) -> dict:  # noqa: ANN001
    """Embedded mode: every stage's handler in this process, each with its own context."""
    from selfjudge.shared.context import make_context
    from selfjudge.shared.messages import STAGES

    handlers = {}
    for stage in STAGES:
        module = importlib.import_module(f"selfjudge.services.{stage}.stage")
        ctx = make_context(settings, stage, bus, metrics=metrics, sessions=sessions, store=store)
        handlers[stage] = (lambda m, c: lambda payload: m.handle(payload, c))(module, ctx)
    return handlers


def cmd_run(args: argparse.Namespace) -> int:
    from selfjudge.shared import loop
    from selfjudge.shared.context import make_context
    from selfjudge.shared.db import make_sessionmaker, migrate
    from selfjudge.shared.metrics import Metrics
    from selfjudge.shared.queue import CeleryBus, LocalBus, make_celery
    from selfjudge.shared.status import format_table, run_status
    from selfjudge.shared.store import open_store

    settings = _settings(args)
    start = time.perf_counter()
    migrate(settings.database_url())
    sessions = make_sessionmaker(settings.database_url())
    store = open_store(settings.store, settings.run.work_dir)
    metrics = Metrics()
    metrics.serve(settings.metrics.port, settings.metrics.addr)
    base = resolve_base_model(settings)
    bus = LocalBus() if settings.embedded else CeleryBus(make_celery(settings))
    ctx = make_context(settings, "launcher", bus, metrics=metrics, sessions=sessions, store=store)
    run_id = loop.start_run(ctx, base)
    log.info("run %s started (%s mode, base model %s)", run_id, "embedded" if settings.embedded else "distributed",
             base)
    if settings.embedded:
        bus.drain(stage_handlers(settings, bus, metrics, sessions, store))
    elif args.wait:
        _wait(sessions, run_id, args.timeout)
    with sessions() as s:
        status = run_status(s, run_id)
    print(json.dumps(status, indent=2) if args.json else format_table(status))
    log.info("run %s %s in %.0fs", run_id, status["run"]["status"], time.perf_counter() - start)
    return 0 if status["run"]["status"] == "done" or not (settings.embedded or args.wait) else 1


def _wait(sessions, run_id: int, timeout: float) -> None:  # noqa: ANN001
    from selfjudge.shared.status import run_status

    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        with sessions() as s:
            status = run_status(s, run_id)
        line = " | ".join(f"it{r['iteration']}:{r['status']} pairs={r['pairs']} judged={r['judged']} "
                          f"kept={r['kept_pairs']}" for r in status["iterations"])
        if line != last:
            log.info("run %s: %s", run_id, line)
            last = line
        if status["run"]["status"] == "done":
            return
        time.sleep(1.0)
    raise TimeoutError(f"run {run_id} not done after {timeout}s")


def cmd_worker(args: argparse.Namespace) -> int:
    from selfjudge.shared.context import make_context
    from selfjudge.shared.messages import task_name
    from selfjudge.shared.metrics import Metrics
    from selfjudge.shared.queue import CeleryBus, make_celery

    settings = _settings(args)
    if settings.embedded:
        raise ConfigError("a worker needs broker.url (SELFJUDGE__BROKER__URL); embedded mode runs in `selfjudge run`")
    app = make_celery(settings)
    metrics = Metrics()
    metrics.serve(settings.metrics.port, settings.metrics.addr)
    ctx = make_context(settings, args.stage, CeleryBus(app), metrics=metrics)
    module = importlib.import_module(f"selfjudge.services.{args.stage}.stage")

    @app.task(name=task_name(args.stage))
    def handle(payload: dict) -> None:
        try:
            module.handle(payload, ctx)
        except Exception as exc:
            metrics.errors.labels(args.stage, type(exc).__name__).inc()
            raise

    app.worker_main(["worker", "-Q", args.stage, "-P", "solo", "-c", "1", "--without-gossip", "--without-mingle",
                     "-n", f"{args.stage}-{os.getpid()}@%h", "--loglevel", args.loglevel])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from selfjudge.shared.db import make_sessionmaker
    from selfjudge.shared.status import format_table, run_status

    settings = _settings(args)
    with make_sessionmaker(settings.database_url())() as s:
        status = run_status(s, args.run)
    print(json.dumps(status, indent=2) if args.json else format_table(status))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="selfjudge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", help="YAML config (env SELFJUDGE__SECTION__KEY overrides it)")
        p.add_argument("--set", action="append", metavar="section.key=value", help="override one setting")

    p = sub.add_parser("build-model", help="build the tiny offline base VLM")
    p.add_argument("--out", required=True)
    p.add_argument("--arch", default="qwen2_5_vl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.set_defaults(fn=cmd_build_model)

    p = sub.add_parser("run", help="run the loop (embedded when no broker is configured)")
    common(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--wait", action="store_true", help="distributed mode: wait for the run to finish")
    p.add_argument("--timeout", type=float, default=24 * 3600)
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("worker", help="run one stage's Celery worker (one process per GPU)")
    common(p)
    p.add_argument("stage", choices=["synthesizer", "reasoner", "filter", "trainer", "evaluator"])
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(fn=cmd_worker)

    p = sub.add_parser("status", help="per-iteration counts and accuracy of a run (the last by default)")
    common(p)
    p.add_argument("--run", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("migrate", help="create or upgrade the database schema")
    common(p)
    p.set_defaults(fn=cmd_migrate)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"selfjudge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
