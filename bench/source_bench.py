"""One iteration's prompt draw from a 1,000,000-record JSONL manifest vs a 1,000-record one.

Both manifests are written here (the records point at 64 small PNG files, reused) and indexed
once (their line offsets, kept under the cache folder, as a run keeps them). Then each draw runs
in a fresh process: `loop._draw_prompts` for iteration 3 with `prompts_per_iteration` = 256
(a seeded permutation, only the drawn lines read and their images decoded). Each process
reports its peak RSS and the draw's seconds.

    memory  peak RSS 1k / peak RSS 1M   (1.0: flat; target 1/1.2 = 0.83, i.e. 1M <= 1.2x 1k)
    time    draw seconds 1k / 1M        (target 0.83)
The details give each side's figures and the memory the draw added over the process at start.

    python bench/source_bench.py [--records 1000000] [--prompts 256]
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

from common import ROOT, Result

TARGET = 0.83  # 1 / 1.2: the 1M side may use at most 1.2x
CHILD = r"""
import json, resource, sys, time
from types import SimpleNamespace
from selfjudge.shared.config import Settings
from selfjudge.shared.loop import _draw_prompts
settings = Settings.model_validate(json.loads(sys.argv[1]))
ctx = SimpleNamespace(settings=settings)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
items, rejected = _draw_prompts(ctx, int(sys.argv[2]), 3)
seconds = time.perf_counter() - t0
assert len(items) == int(sys.argv[2]) and not rejected, (len(items), rejected[:3])
print(json.dumps({"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "start_mb": before / 1024, "first": items[0].prompt_id}))
"""


def write_manifest(folder: Path, records: int) -> Path:
    """`records` lines over 64 shared images, written in blocks (the writer's memory stays small)."""
    from PIL import Image

    images = folder / "img"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(64):
        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (i * 4, 255 - i * 4, 90)).save(buf, format="PNG")
        (images / f"{i}.png").write_bytes(buf.getvalue())
    path = folder / "prompts.jsonl"
    with open(path, "w") as f:
        for start in range(0, records, 10_000):
            f.write(
                "".join(
                    json.dumps(
                        {
                            "id": f"r{i}",
                            "image": f"img/{i % 64}.png",
                            "instruction": f"What is shown in picture number {i}?",
                        }
                    )
                    + "\n"
                    for i in range(start, min(records, start + 10_000))
                )
            )
    return path


def settings_for(manifest: Path, cache: Path) -> dict:
    return {
        "run": {"seed": 1, "work_dir": str(cache.parent)},
        "source": {"kind": "jsonl", "path": str(manifest), "cache_dir": str(cache)},
    }


def measure(manifest: Path, cache: Path, prompts: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(settings_for(manifest, cache)), str(prompts)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(work: Path, records: int = 1_000_000, prompts: int = 256) -> list[Result]:
    from selfjudge.shared.sources.files import JsonlSource

    sides = {}
    for name, n in (("small", 1000), ("large", records)):
        manifest = write_manifest(work / f"source-{name}", n)
        cache = work / f"source-{name}" / "cache"
        assert JsonlSource(manifest, cache_dir=cache).count() == n  # the offsets, built once and kept
        measure(manifest, cache, prompts)  # warm the page cache
        runs = [measure(manifest, cache, prompts) for _ in range(3)]
        sides[name] = {
            "peak_mb": min(r["peak_mb"] for r in runs),
            "seconds": min(r["seconds"] for r in runs),
            "added_mb": min(r["peak_mb"] - r["start_mb"] for r in runs),
        }
    small, large = sides["small"], sides["large"]
    detail = (
        f"{prompts} prompts drawn; 1k records: peak {small['peak_mb']:.0f} MB (+{small['added_mb']:.0f} MB "
        f"by the draw), {small['seconds']:.3f} s; {records:,} records: peak {large['peak_mb']:.0f} MB "
        f"(+{large['added_mb']:.0f} MB), {large['seconds']:.3f} s"
    )
    return [
        Result(
            f"source draw {records:,} vs 1,000 records: peak memory (1k / 1M)",
            small["peak_mb"] / large["peak_mb"],
            TARGET,
            detail,
        ),
        Result(
            f"source draw {records:,} vs 1,000 records: time (1k / 1M)",
            small["seconds"] / large["seconds"],
            TARGET,
            detail,
        ),
    ]


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--prompts", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="selfjudge-source-bench-") as tmp:
        for r in compare(Path(tmp), args.records, args.prompts):
            print(r.line())
            print("  ", r.detail)


if __name__ == "__main__":
    main()
