"""Run `sft` on several processes (DDP or FSDP) of one trainer worker, through torchrun.

`train(model_path, examples, out_dir, cfg, ...)` is what the trainer service calls: with
`cfg.distributed == "none"` or `cfg.nproc <= 1` it is `sft` in this process; otherwise it writes
the examples (images as PNG, lossless) and the config into a spec folder, starts

    python -m torch.distributed.run --standalone --nproc-per-node N -m selfjudge.shared.models.sft.launch SPEC

and relays rank 0's per-step progress (a JSON-lines file) to `progress` while it runs. Each rank
calls `sft` with the same arguments; `sft` joins the process group (gloo on CPU, NCCL on CUDA),
wraps the model in DDP or FSDP2 and takes its share of every optimizer step's micro-batches, so
the global batch is `batch_size * grad_accum * nproc`. Rank 0 writes the output folder and the
result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from PIL import Image

from ...config import TrainConfig
from .data import SFTExample, identity
from .loop import TrainResult, sft

log = logging.getLogger(__name__)
ENTRY = "selfjudge.shared.models.sft.launch"


def train(
    model_path: str,
    examples: Sequence[SFTExample],
    out_dir: str | Path,
    cfg: TrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
    resume_from: str | Path | None = None,
    spec_dir: str | Path | None = None,
) -> TrainResult:
    """`sft` here, or on cfg.nproc processes when cfg.distributed is "ddp" or "fsdp"."""
    if cfg.distributed == "none" or cfg.nproc <= 1:
        return sft(model_path, examples, out_dir, cfg, progress=progress, resume_from=resume_from)
    return launch(model_path, examples, out_dir, cfg, progress=progress, resume_from=resume_from, spec_dir=spec_dir)


def write_spec(
    folder: Path, model_path: str, examples: Sequence[SFTExample], out_dir: str | Path, cfg: TrainConfig,
    resume_from: str | Path | None,
) -> Path:  # fmt: skip
    """examples.jsonl + images/<sha256>.png (each distinct image once) + spec.json.

    The examples are read one at a time (a store-backed source fetches one image at a time), so
    writing the spec does not hold the data in memory; each line keeps the example's identity, so
    a resumed run launched again matches its fingerprint.
    """
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names: dict[int, str] = {}
    with open(folder / "examples.jsonl", "w") as f:
        for i in range(len(examples)):
            ex = examples[i]
            refs = []
            for im in ex.images:
                if id(im) not in names:
                    names[id(im)] = _write_image(folder / "images", im)
                refs.append(names[id(im)])
            if len(names) > 4096:  # ids of images already freed may be reused: the cache is only a shortcut
                names.clear()
            row = {
                "text": ex.text,
                "answer": ex.answer,
                "system": ex.system,
                "images": refs,
                "id": identity(examples, i),
            }
            f.write(json.dumps(row) + "\n")
    spec = {
        "model_path": str(model_path),
        "out_dir": str(Path(out_dir).resolve()),
        "resume_from": str(Path(resume_from).resolve()) if resume_from is not None else None,
        "config": cfg.as_dict(),
        "progress": str(folder / "progress.jsonl"),
        "result": str(folder / "result.json"),
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    return folder / "spec.json"


def _write_image(folder: Path, im: Image.Image) -> str:
    name = hashlib.sha256(im.mode.encode() + str(im.size).encode() + im.tobytes()).hexdigest() + ".png"
    if not (folder / name).exists():
        im.save(folder / name, format="PNG")
    return name


class FolderExamples:
    """The examples of a spec folder, read one at a time: a line (by its byte offset) and its images."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.offsets: list[int] = []
        with open(self.folder / "examples.jsonl", "rb") as f:
            pos = 0
            for line in f:
                self.offsets.append(pos)
                pos += len(line)

    def __len__(self) -> int:
        return len(self.offsets)

    def _row(self, i: int) -> dict:
        if not 0 <= i < len(self.offsets):
            raise IndexError(i)
        with open(self.folder / "examples.jsonl", "rb") as f:
            f.seek(self.offsets[i])
            return json.loads(f.readline())

    def __getitem__(self, i: int) -> SFTExample:
        r = self._row(i)
        images = []
        for name in r["images"]:
            with Image.open(self.folder / "images" / name) as im:
                images.append(im.copy())
        return SFTExample(text=r["text"], images=images, answer=r["answer"], system=r["system"])

    def __iter__(self) -> Iterator[SFTExample]:
        return (self[i] for i in range(len(self)))

    def identity(self, i: int) -> str:
        return self._row(i)["id"]


def read_examples(folder: Path) -> FolderExamples:
    return FolderExamples(folder)


def launch(
    model_path: str,
    examples: Sequence[SFTExample],
    out_dir: str | Path,
    cfg: TrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
    resume_from: str | Path | None = None,
    spec_dir: str | Path | None = None,
    timeout: float | None = None,
) -> TrainResult:
    if spec_dir is not None:
        Path(spec_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sft-spec-", dir=spec_dir) as tmp:
        folder = Path(tmp)
        spec = write_spec(folder, model_path, examples, out_dir, cfg, resume_from)
        env = dict(os.environ)
        if not cfg.device.startswith("cuda"):  # CPU ranks share the cores instead of each taking all
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.nproc)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.nproc}",
               "-m", ENTRY, str(spec)]  # fmt: skip
        log.info("training on %s processes (%s): %s", cfg.nproc, cfg.distributed, " ".join(cmd))
        logfile = folder / "torchrun.log"
        with open(logfile, "w") as lf:
            proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env)
            relay = _ProgressRelay(folder / "progress.jsonl", progress)
            start = time.monotonic()
            try:
                while proc.poll() is None:
                    relay.poll()
                    if timeout is not None and time.monotonic() - start > timeout:
                        raise TimeoutError(f"distributed training ran past {timeout}s")
                    time.sleep(0.2)
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            relay.poll()
        if proc.returncode != 0 or not (folder / "result.json").exists():
            tail = logfile.read_text()[-4000:]
            raise RuntimeError(f"distributed training failed (exit {proc.returncode}):\n{tail}")
        return TrainResult(**json.loads((folder / "result.json").read_text()))


class _ProgressRelay:
    def __init__(self, path: Path, progress: Callable[[int, int, float], None] | None) -> None:
        self.path, self.progress, self.offset = path, progress, 0

    def poll(self) -> None:
        if self.progress is None or not self.path.exists():
            return
        with open(self.path) as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind("\n") + 1  # whole lines only
        self.offset += len(chunk[:end].encode())
        for line in chunk[:end].splitlines():
            step, total, loss = json.loads(line)
            self.progress(step, total, loss)


def main(argv: list[str] | None = None) -> int:
    """torchrun entry point: every rank trains; rank 0 reports progress and the result."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=logging.INFO, format=f"[rank {os.environ.get('RANK', '0')}] %(levelname)s %(name)s: %(message)s"
    )
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    cfg = TrainConfig(**spec["config"])
    examples = read_examples(spec_path.parent)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    progress = None
    if rank0:
        out = open(spec["progress"], "a", buffering=1)

        def progress(step: int, total: int, loss: float) -> None:
            out.write(json.dumps([step, total, loss]) + "\n")

    result = sft(spec["model_path"], examples, spec["out_dir"], cfg, progress=progress, resume_from=spec["resume_from"])
    if rank0:
        tmp = Path(spec["result"] + ".tmp")
        tmp.write_text(json.dumps(asdict(result), default=str))
        tmp.rename(spec["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
