import pytest

from selfjudge.shared.config import StoreConfig
from selfjudge.shared.store import (
    LocalStore,
    S3Store,
    StoreError,
    check_key,
    get_dir,
    get_jsonl,
    put_dir,
    put_image,
    put_jsonl,
)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, s3_server):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    fields = {k: v for k, v in s3_server.items() if k in StoreConfig.model_fields}
    return S3Store(StoreConfig(**dict(fields, bucket=f"store-test-{tmp_path.name[-12:].lower().replace('_', '-')}")))


def test_roundtrip_jsonl_and_listing(store):
    assert put_jsonl(store, "runs/1/iter1/pairs/00000.jsonl", [{"a": 1}, {"b": "é"}]) == 2
    assert list(get_jsonl(store, "runs/1/iter1/pairs/00000.jsonl")) == [{"a": 1}, {"b": "é"}]
    put_jsonl(store, "runs/1/iter1/pairs/00001.jsonl", [])
    assert list(get_jsonl(store, "runs/1/iter1/pairs/00001.jsonl")) == []
    assert store.list("runs/1/") == ["runs/1/iter1/pairs/00000.jsonl", "runs/1/iter1/pairs/00001.jsonl"]
    assert store.exists("runs/1/iter1/pairs/00000.jsonl") and not store.exists("runs/1/nothing")
    with pytest.raises(StoreError, match="no artifact"):
        store.get_bytes("runs/1/nothing")


def test_images_are_content_addressed(store):
    digest, key = put_image(store, b"\x89PNG fake")
    assert key == f"images/{digest[:2]}/{digest}.png" and put_image(store, b"\x89PNG fake") == (digest, key)


def test_directories_roundtrip_with_hash(store, tmp_path):
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"\0" * 1000)
    digest = put_dir(store, "ckpts/one", src)
    out = get_dir(store, "ckpts/one", tmp_path / "out")
    assert (out / "sub" / "w.bin").read_bytes() == b"\0" * 1000
    (src / "config.json").write_text('{"x": 1}')
    assert put_dir(store, "ckpts/two", src) != digest


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../../b", "a//b", "", "a/./b", "a\\b", "a/b/", "a b"])
def test_bad_keys_are_refused(store, key):
    with pytest.raises(StoreError, match="invalid artifact key"):
        store.put_bytes(key, b"x")
    assert check_key("runs/1/a-b_c.d") == "runs/1/a-b_c.d"


def test_s3_credentials_are_enforced(s3_server):
    fields = {k: v for k, v in s3_server.items() if k in StoreConfig.model_fields}
    with pytest.raises(Exception, match="(?i)access|denied|signature"):
        S3Store(StoreConfig(**dict(fields, secret_key="wrong-secret")), retries=0)
