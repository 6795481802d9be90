"""Artifact store: shards (JSONL), images (PNG), checkpoints (HF folders), reports.

Two implementations behind one small interface: `S3Store` on the `minio` client
(MinIO in compose, any S3 server in tests) and `LocalStore` (a folder, embedded mode).
Keys are validated: relative, no `..`, no empty segments, a safe character set.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from .config import StoreConfig

KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._\-]*(/[A-Za-z0-9_][A-Za-z0-9._\-]*)*$")


class StoreError(RuntimeError):
    pass


def check_key(key: str) -> str:
    if not isinstance(key, str) or len(key) > 900 or not KEY_RE.match(key) or ".." in key.split("/"):
        raise StoreError(f"invalid artifact key {key!r}: use relative a/b/c names of [A-Za-z0-9._-], no '..'")
    return key


class Store(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...


class LocalStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
        if self.root not in path.parents:
            raise StoreError(f"invalid artifact key {key!r}: escapes the store")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)  # readers never see half a file

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise StoreError(f"no artifact {key!r} in {self.root}")
        return path.read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.endswith(".tmp")
        )


PERMANENT_S3_CODES = {
    "NoSuchKey",
    "NoSuchBucket",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidBucketName",
    "BucketAlreadyOwnedByYou",
}


class S3Store:
    """S3 via the minio client; transient failures are retried with backoff."""

    def __init__(self, cfg: StoreConfig, retries: int | None = None) -> None:
        from minio import Minio

        self.client = Minio(
            cfg.endpoint,
            access_key=cfg.access_key or None,
            secret_key=cfg.secret_key or None,
            secure=cfg.secure,
            region=cfg.region,
        )
        self.bucket = cfg.bucket
        self.endpoint = cfg.endpoint
        self.retries = cfg.retries if retries is None else retries
        self._call(self._ensure_bucket)

    def _ensure_bucket(self) -> None:
        """Create the bucket unless it exists. Idempotent under a race: when several processes start at
        once, each may find no bucket and try to create it; the losers' "already exists" means done."""
        from minio.error import S3Error

        if self.client.bucket_exists(self.bucket):
            return
        try:
            self.client.make_bucket(self.bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists") or not self.client.bucket_exists(
                self.bucket
            ):
                raise

    def _call(self, fn, *args: Any, **kwargs: Any) -> Any:  # noqa: ANN001
        """Run one client call, retrying connection errors and server-side (5xx) errors."""
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except S3Error as exc:
                if exc.code in PERMANENT_S3_CODES or attempt == self.retries:
                    raise
            except (OSError, HTTPError) as exc:
                if attempt == self.retries:
                    raise StoreError(f"S3 store unreachable at {self.endpoint}: {exc}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def put_bytes(self, key: str, data: bytes) -> None:
        check_key(key)
        self._call(lambda: self.client.put_object(self.bucket, key, io.BytesIO(data), len(data)))

    def get_bytes(self, key: str) -> bytes:
        from minio.error import S3Error

        check_key(key)

        def get() -> bytes:
            resp = self.client.get_object(self.bucket, key)
            try:
                return resp.read()
            finally:
                resp.close()
                resp.release_conn()

        try:
            return self._call(get)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise StoreError(f"no artifact {key!r} in bucket {self.bucket}") from None
            raise

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        check_key(key)
        try:
            self._call(self.client.stat_object, self.bucket, key)
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise

    def list(self, prefix: str) -> list[str]:
        return sorted(
            self._call(
                lambda: [o.object_name for o in self.client.list_objects(self.bucket, prefix=prefix, recursive=True)]
            )
        )


def open_store(cfg: StoreConfig, work_dir: str) -> Store:
    if cfg.kind == "s3":
        return S3Store(cfg)
    return LocalStore(cfg.root or Path(work_dir) / "store")


# --- helpers over any Store ---------------------------------------------------------------


def put_jsonl(store: Store, key: str, records: Iterable[dict]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    store.put_bytes(key, ("\n".join(lines) + ("\n" if lines else "")).encode())
    return len(lines)


def get_jsonl(store: Store, key: str) -> Iterator[dict]:
    for line in store.get_bytes(key).decode().splitlines():
        if line.strip():
            yield json.loads(line)


def put_image(store: Store, png: bytes) -> tuple[str, str]:
    """Content-addressed: returns (sha256, key); storing the same image twice is a no-op."""
    digest = hashlib.sha256(png).hexdigest()
    key = f"images/{digest[:2]}/{digest}.png"
    if not store.exists(key):
        store.put_bytes(key, png)
    return digest, key


def put_dir(store: Store, prefix: str, folder: str | Path) -> str:
    """Upload a folder (e.g. a save_pretrained checkpoint); returns the sha256 over its files."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        data = path.read_bytes()
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        store.put_bytes(f"{prefix}/{rel}", data)
    return digest.hexdigest()


def get_dir(store: Store, prefix: str, folder: str | Path) -> Path:
    folder = Path(folder)
    keys = store.list(prefix + "/")
    if not keys:
        raise StoreError(f"no artifacts under {prefix!r}")
    for key in keys:
        dest = folder / key[len(prefix) + 1 :]
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(store.get_bytes(key))
    return folder


def get_image(store: Store, key: str):  # noqa: ANN201 - PIL.Image.Image
    """Decode a stored image as RGB; raises ValueError naming the key if it is unusable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(store.get_bytes(key))) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"image {key} cannot be decoded: {exc}") from exc
