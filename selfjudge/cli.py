"""`selfjudge` command line: build-model, run, worker, status, plan, select, migrate.

The replication (`make replicate`) is a recipe outside the package: `python -m recipes.replicate`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path

from sqlalchemy.orm import sessionmaker

from selfjudge.shared.config import ConfigError, Settings, load_settings

log = logging.getLogger("selfjudge")


def _overrides(args: argparse.Namespace) -> dict:
    """`--set section.key=value` options as nested dicts (values as given; the config coerces them)."""
    overrides: dict = {}
    for item in getattr(args, "set", None) or []:
        key, _, value = item.partition("=")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return overrides


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, overrides=_overrides(args))


def resolve_base_model(settings: Settings) -> str:
    """`tiny` builds (once, cached under work_dir) the offline base model; anything else is used as is."""
    if settings.model.base != "tiny":
        return settings.model.base
    from selfjudge.basemodel import build_base_model

    steps = settings.model.tiny_pretrain_steps
    src = settings.source
    world = f"-size{src.image_size}-objects{src.max_objects}-scale{src.object_scale:g}-{src.layout}"
    folder = Path(settings.run.work_dir).resolve() / "models" / f"tiny-seed{settings.run.seed}-steps{steps}{world}"
    if not (folder / "config.json").exists():
        build_base_model(
            folder,
            seed=settings.run.seed,
            pretrain_steps=steps,
            image_size=src.image_size,
            max_objects=src.max_objects,
            object_scale=src.object_scale,
            layout=src.layout,
        )
    return str(folder)


def apply_cpu_threads(settings: Settings) -> None:
    if settings.model.cpu_threads:
        import torch

        torch.set_num_threads(settings.model.cpu_threads)


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
    from selfjudge.shared import loop, shards
    from selfjudge.shared.context import make_context
    from selfjudge.shared.db import make_sessionmaker, migrate
    from selfjudge.shared.metrics import Metrics
    from selfjudge.shared.models.generation.openai_backend import plan_problem
    from selfjudge.shared.queue import CeleryBus, LocalBus, make_celery
    from selfjudge.shared.status import format_table, run_status
    from selfjudge.shared.store import open_store

    settings = _settings(args)
    start = time.perf_counter()
    plan = plan_problem(settings.model.backend, settings.train.method, settings.train.lora_merge)
    if plan:  # before any server is touched: the plan itself is wrong
        raise ConfigError(f"cannot start: {plan}")
    preflight(settings, need_broker=not settings.embedded)
    apply_cpu_threads(settings)
    migrate(settings.database_url())
    sessions = make_sessionmaker(settings.database_url())
    store = open_store(settings.store, settings.run.work_dir)
    metrics = Metrics()
    metrics.serve(settings.metrics.port, settings.metrics.addr)
    bus = LocalBus() if settings.embedded else CeleryBus(make_celery(settings))
    ctx = make_context(settings, "launcher", bus, metrics=metrics, sessions=sessions, store=store)
    if args.resume:
        run_id = args.resume
        log.info("run %s: resuming, %s messages re-sent", run_id, loop.resume(ctx, run_id))
    else:
        base = resolve_base_model(settings)
        run_id = loop.start_run(ctx, base)
        log.info(
            "run %s started (%s mode, base model %s)", run_id, "embedded" if settings.embedded else "distributed", base
        )
    if settings.embedded:

        def failed(stage: str, payload: dict, exc: Exception) -> None:
            log.error(
                "%s failed on %s: %s: %s (recorded; `selfjudge run --resume %s` retries it)",
                stage,
                payload,
                type(exc).__name__,
                exc,
                run_id,
                exc_info=exc,
            )
            metrics.errors.labels(stage, type(exc).__name__).inc()
            shards.record_failure(sessions, stage, payload, exc, final=True)

        bus.drain(stage_handlers(settings, bus, metrics, sessions, store), on_error=failed)
    elif args.wait:
        _wait(sessions, run_id, args.timeout)
    with sessions() as s:
        status = run_status(s, run_id)
    print(json.dumps(status, indent=2) if args.json else format_table(status))
    log.info("run %s %s in %.0fs", run_id, status["run"]["status"], time.perf_counter() - start)
    return 0 if status["run"]["status"] == "done" or not (settings.embedded or args.wait) else 1


def _wait(sessions: sessionmaker, run_id: int, timeout: float) -> None:
    from selfjudge.shared.status import run_status

    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            with sessions() as s:
                status = run_status(s, run_id)
        except Exception as exc:  # noqa: BLE001 - e.g. the database restarting: keep waiting
            log.warning("run %s: status unavailable (%s); retrying", run_id, str(exc).splitlines()[0][:200])
            time.sleep(2.0)
            continue
        line = " | ".join(
            f"it{r['iteration']}:{r['status']} pairs={r['pairs']} judged={r['judged']} kept={r['kept_pairs']}"
            for r in status["iterations"]
        )
        if line != last:
            log.info("run %s: %s", run_id, line)
            last = line
        if status["run"]["status"] == "done":
            return
        time.sleep(1.0)
    raise TimeoutError(f"run {run_id} not done after {timeout}s")


def cmd_worker(args: argparse.Namespace) -> int:
    """One stage's Celery worker; the task, its retry/outage/dead-letter policy and the trainer's
    lease watcher are shared/worker.py's."""
    from selfjudge.shared.worker import serve

    settings = _settings(args)
    if settings.embedded:
        raise ConfigError("a worker needs broker.url (SELFJUDGE__BROKER__URL); embedded mode runs in `selfjudge run`")
    preflight(settings, need_broker=True)
    apply_cpu_threads(settings)
    serve(settings, args.stage, importlib.import_module(f"selfjudge.services.{args.stage}.stage").handle, args.loglevel)
    return 0


def preflight(settings: Settings, need_broker: bool) -> None:
    """Fail at start, in one message, on servers that cannot be reached or a missing base model."""
    import sqlalchemy as sa

    problems = []
    url = settings.database_url()
    if url.startswith("sqlite:///"):  # embedded: the file is created on first use
        Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = sa.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:  # noqa: BLE001
        problems.append(
            f"database {settings.redacted()['database']['url'] or 'sqlite'} unreachable: "
            f"{str(exc).splitlines()[0][:200]}"
        )
    if need_broker:
        from kombu import Connection

        try:
            with Connection(settings.broker.url, connect_timeout=5) as conn:
                conn.ensure_connection(max_retries=1)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"broker {settings.redacted()['broker']['url']} unreachable: {str(exc)[:200]}")
    if settings.store.kind == "s3":
        from selfjudge.shared.store import S3Store

        try:
            S3Store(settings.store, retries=1)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"S3 store {settings.store.endpoint} unusable: {str(exc)[:200]}")
    base = settings.model.base
    if base.startswith(("/", ".", "~")) and not Path(base).expanduser().is_dir():  # else: "tiny" or a hub id
        problems.append(f"model.base {base} is not a checkpoint folder")
    if problems:
        raise ConfigError("cannot start: " + "; ".join(problems))


def cmd_retry(args: argparse.Namespace) -> int:
    """Send a run's failed (dead-lettered) tasks again, and anything else left unfinished."""
    from selfjudge.shared import loop
    from selfjudge.shared.context import make_context
    from selfjudge.shared.queue import CeleryBus, dead_letters, make_celery

    settings = _settings(args)
    if settings.embedded:
        args.resume, args.wait, args.json, args.timeout = args.run, False, False, 0
        return cmd_run(args)
    app = make_celery(settings)
    letters = dead_letters(app, take=lambda letter: letter["payload"].get("run_id") == args.run)
    ctx = make_context(settings, "launcher", CeleryBus(app))
    sent = loop.resume(ctx, args.run)  # failed shards are not `done`: resume sends them again
    cleared = sum(letter["payload"].get("run_id") == args.run for letter in letters)
    print(f"run {args.run}: {cleared} dead-lettered tasks cleared, {sent} messages sent")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from selfjudge.shared.db import make_sessionmaker
    from selfjudge.shared.status import format_table, run_status

    settings = _settings(args)
    with make_sessionmaker(settings.database_url())() as s:
        status = run_status(s, args.run)
    if not settings.embedded and status["run"]:
        from selfjudge.shared.queue import dead_letters, make_celery, queue_depths

        app = make_celery(settings)
        status["queues"] = queue_depths(app)
        status["dead_letters"] = [
            letter for letter in dead_letters(app) if letter["payload"].get("run_id") == status["run"]["id"]
        ]
    print(json.dumps(status, indent=2) if args.json else format_table(status))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from selfjudge.export import export_iteration
    from selfjudge.shared.db import make_sessionmaker
    from selfjudge.shared.store import open_store

    settings = _settings(args)
    try:
        written = export_iteration(
            make_sessionmaker(settings.database_url()),
            open_store(settings.store, settings.run.work_dir),
            args.run,
            args.iteration,
            args.out,
            fmt=args.format,
        )
    except LookupError as exc:
        print(f"selfjudge: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({name: [str(f) for f in files] for name, files in written.items()}, indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """One evaluation outside the loop: a checkpoint on a benchmark file, through the evaluator service."""
    from selfjudge.services.evaluator.standalone import evaluate_standalone

    settings = _settings(args)
    try:
        result = evaluate_standalone(
            settings,
            args.benchmark,
            args.data,
            args.model,
            k=args.k,
            images=args.images,
            parser=args.parser,
            limit=args.limit,
            max_new_tokens=args.max_new_tokens,
            resume=not args.fresh,
        )
    except (FileNotFoundError, ValueError) as exc:  # no such file, not the benchmark's schema, bad k
        raise ConfigError(f"cannot evaluate {args.data}: {exc}") from None
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    pct = lambda v: "-" if v is None else f"{100 * v:5.1f}%"  # noqa: E731
    items = result["items"]
    print(
        f"{result['benchmark']} (run {result['run_id']}): {items['used']} items used, {items['excluded']} "
        f"excluded, {items['scored']} scored; overall {pct(result['overall'])}, macro {pct(result['macro'])}"
    )
    for cat, acc in result["accuracy"].items():
        lo, hi = result["ci"].get(cat, (None, None))
        print(
            f"  {cat:<34} {pct(acc)}  [{pct(lo)}, {pct(hi)}]  n={result['n'][cat]:<5} "
            f"both orders {pct(result['both_orders'].get(cat))}  position bias {pct(result['position_bias'].get(cat))}"
        )
    for ex in result["excluded"][:20]:
        print(f"  excluded {ex['record_id']}: {ex['reason']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write a run's evaluation report (Markdown + PNG plot + JSON) to a folder."""
    from selfjudge.services.evaluator.report import write_report
    from selfjudge.shared.db import Run, make_sessionmaker

    settings = _settings(args)
    sessions = make_sessionmaker(settings.database_url())
    if args.compare:
        from selfjudge.services.evaluator.report import compare_evaluations

        def point(text: str) -> tuple[int, int]:
            run, _, iteration = text.partition(":")
            try:
                return int(run), int(iteration or 0)
            except ValueError:
                raise ConfigError(f"--compare takes RUN[:ITERATION], not {text!r}") from None

        with sessions() as s:
            print(json.dumps(compare_evaluations(s, point(args.compare[0]), point(args.compare[1])), indent=2))
        return 0
    run_id = args.run
    if run_id is None:
        from sqlalchemy import select

        with sessions() as s:
            run_id = s.scalar(select(Run.id).order_by(Run.id.desc()).limit(1))
        if run_id is None:
            raise ConfigError("no runs in the database")
    print(write_report(sessions, run_id, args.out or Path(settings.run.work_dir) / "reports" / f"run{run_id}"))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """What the config will cost (memory, tokens, GPU-hours), from config.json only: shared/plan.py."""
    from dataclasses import fields

    from selfjudge.shared.plan import THROUGHPUTS, Assumptions, format_plan, make_plan

    settings = _settings(args)
    pairs = dict(item.partition("=")[::2] for item in args.throughput or [])
    unknown = set(pairs) - set(THROUGHPUTS)
    assumed = dict(item.partition("=")[::2] for item in args.assume or [])
    types = {f.name: f.type for f in fields(Assumptions)}
    unknown |= set(assumed) - set(types)
    if unknown:
        raise ConfigError(
            f"unknown --throughput/--assume names {sorted(unknown)}; known: {sorted(THROUGHPUTS)} and {sorted(types)}"
        )
    try:
        assumptions = Assumptions(**{k: (float if types[k] == "float" else int)(v) for k, v in assumed.items()})
        plan = make_plan(settings, assumptions, {k: float(v) for k, v in pairs.items()})
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"cannot plan: {exc}") from None
    print(json.dumps(plan.to_dict(), indent=2, default=str) if args.json else format_plan(plan))
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    """The checkpoint to ship, chosen without labels (shared/selection.py); printed and recorded."""
    from selfjudge.shared import selection
    from selfjudge.shared.db import make_sessionmaker
    from selfjudge.shared.store import open_store

    settings = _settings(args)
    sessions = make_sessionmaker(settings.database_url())
    with sessions() as s:
        choice = selection.choose(selection.signals(s, args.run))
    if choice is None:
        raise ConfigError(
            f"run {args.run} has no selection scores: the run needs filter.selection_holdout > 0 and "
            f"an evaluated iteration 1"
        )
    selection.record_choice(sessions, open_store(settings.store, settings.run.work_dir), args.run, choice)
    print(
        json.dumps(choice, indent=2)
        if args.json
        else f"run {args.run}: checkpoint {choice['checkpoint_id']} (iteration {choice['iteration']})\n"
        f"reason: {choice['reason']}"
    )
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
    p.add_argument("--resume", type=int, metavar="RUN_ID", help="continue a stopped run where it stopped")
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

    p = sub.add_parser("retry", help="re-send a run's failed (dead-lettered) and unfinished work")
    common(p)
    p.add_argument("--run", type=int, required=True)
    p.set_defaults(fn=cmd_retry)

    p = sub.add_parser("export", help="an iteration's pairs and kept traces as a Hugging Face dataset")
    common(p)
    p.add_argument("--run", type=int, required=True)
    p.add_argument("--iteration", type=int, required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=["parquet", "jsonl"], default="parquet")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("eval", help="evaluate one checkpoint on a benchmark file (outside the loop)")
    common(p)
    p.add_argument("--benchmark", required=True, choices=["vl-rewardbench", "mm-rewardbench"])
    p.add_argument("--data", required=True, help="the benchmark file or folder (local or s3://bucket/key)")
    p.add_argument("--model", required=True, help="checkpoint folder or hub id")
    p.add_argument("--k", type=int, help="official samples per item (default: vl-rewardbench 5, mm-rewardbench 1)")
    p.add_argument("--images", default="", help="image root (default: next to the data file)")
    p.add_argument("--parser", choices=["official", "selfjudge"], default="official")
    p.add_argument("--limit", type=int, default=0, help="only the first N records")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--fresh", action="store_true", help="do not resume an unfinished identical evaluation")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("report", help="write a run's evaluation report (Markdown, PNG plot, JSON)")
    common(p)
    p.add_argument("--run", type=int, help="run id (default: the last run)")
    p.add_argument("--out", help="output folder (default: <work_dir>/reports/run<id>)")
    p.add_argument(
        "--compare",
        nargs=2,
        metavar="RUN[:ITER]",
        help="instead: a paired comparison (McNemar, bootstrap) of two evaluated checkpoints, as JSON",
    )
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("select", help="choose a run's checkpoint without labels (its selection-set score)")
    common(p)
    p.add_argument("--run", type=int, required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_select)

    p = sub.add_parser("plan", help="GPU memory, tokens and GPU-hours of a config, from config.json (no weights)")
    common(p)
    p.add_argument(
        "--throughput",
        action="append",
        metavar="name=tokens_per_s",
        help="override a throughput (per GPU, at 8.3B params): generate_vllm, train_full, ...",
    )
    p.add_argument(
        "--assume",
        action="append",
        metavar="name=value",
        help="override an assumption: gpu_memory_gib, closed_share, keep_rate, sequences_in_flight, ...",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("migrate", help="create or upgrade the database schema")
    common(p)
    p.set_defaults(fn=cmd_migrate)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"selfjudge: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
