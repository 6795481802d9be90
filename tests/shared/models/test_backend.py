from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from selfjudge.shared.models.generation.backend import GenerationBackend, SamplingParams
from selfjudge.shared.models.generation.load import load_backend
from selfjudge.shared.models.generation.transformers_backend import TransformersBackend

from .conftest import check_n_samples, requests


@pytest.fixture(scope="module")
def backend(tiny_qwen: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_qwen), model_id="tiny", batch_size=4)


def test_load_backend(tiny_qwen: Path) -> None:
    be = load_backend("transformers", str(tiny_qwen), model_id="abc")
    assert isinstance(be, TransformersBackend) and isinstance(be, GenerationBackend) and be.model_id == "abc"
    with pytest.raises(NotImplementedError):
        load_backend("nope", str(tiny_qwen))


def test_greedy_batch_keeps_order_and_is_batch_invariant(backend: TransformersBackend) -> None:
    reqs = requests()
    calls: list[tuple[int, int]] = []
    params = SamplingParams(max_new_tokens=12)
    batched = backend.generate(reqs, params, progress=lambda d, t: calls.append((d, t)))
    assert [g.key for g in batched] == [r.key for r in reqs]
    assert calls[-1] == (len(reqs), len(reqs)) and len(calls) >= 3  # 3 image counts -> >= 3 batches
    assert backend.generate(reqs, params) == batched  # deterministic
    for r, g in zip(reqs, batched):
        alone = backend.generate([r], params)[0]
        assert alone == g, r.key
        assert len(g.texts) == 1 and 1 <= g.token_counts[0] <= 12
    # prompt length grows with images: 16 placeholder tokens per 112x112 image
    by_key = {g.key: g for g in batched}
    assert by_key["r1"].prompt_tokens > by_key["r0"].prompt_tokens + 16


def test_token_counts_match_plain_generate(backend: TransformersBackend) -> None:
    req = requests()[1]
    g = backend.generate([req], SamplingParams(max_new_tokens=10))[0]
    enc = backend._encode([req])
    with torch.inference_mode():
        out = backend.model.generate(
            **enc, do_sample=False, max_new_tokens=10, eos_token_id=backend.stop_ids, pad_token_id=backend.pad_id
        )
    new = out[0, enc["input_ids"].shape[1] :]
    assert g.prompt_tokens == enc["input_ids"].shape[1]
    assert g.token_counts == [len(new)]
    assert g.texts == [backend.processor.tokenizer.decode(new, skip_special_tokens=True)]


def test_count_stops_at_first_stop_token(backend: TransformersBackend) -> None:
    eos, pad = backend.stop_ids[0], backend.pad_id
    assert backend._count(torch.tensor([5, 6, eos, pad, pad])) == 3
    assert backend._count(torch.tensor([5, 6, 7])) == 3


def test_sampling_n(backend: TransformersBackend) -> None:
    check_n_samples(backend)


def test_checkpoint_sampling_defaults_are_ignored(
    tiny_qwen: Path, backend: TransformersBackend, tmp_path: Path
) -> None:
    """A hub-style generation_config.json (repetition_penalty, top_k=1, ...) must not change outputs."""
    hub_like = tmp_path / "hub_like"
    shutil.copytree(tiny_qwen, hub_like)
    cfg = json.loads((hub_like / "generation_config.json").read_text())
    cfg |= {"do_sample": True, "temperature": 0.1, "top_k": 1, "top_p": 0.001, "repetition_penalty": 1.5}
    (hub_like / "generation_config.json").write_text(json.dumps(cfg))
    other = TransformersBackend(str(hub_like), batch_size=4)
    reqs = requests()[:2]
    for params in (SamplingParams(max_new_tokens=12), SamplingParams(n=2, temperature=1.0, max_new_tokens=8)):
        assert other.generate(reqs, params) == backend.generate(reqs, params)


def test_static_decode_gives_the_same_tokens(tiny_qwen: Path, backend: TransformersBackend) -> None:
    """decode="static" (a static KV cache; compiled on CUDA): prompts padded to a multiple of
    STATIC_PAD, and the same greedy completions as plain decoding, for 0, 1 and 2 images."""
    from selfjudge.shared.models.generation.transformers_backend import STATIC_PAD

    static = load_backend("transformers", str(tiny_qwen), model_id="tiny", batch_size=4, decode="static")
    reqs = requests()
    assert static._encode(reqs[:2])["input_ids"].shape[1] % STATIC_PAD == 0
    params = SamplingParams(max_new_tokens=12)
    assert static.generate(reqs, params) == backend.generate(reqs, params)
    with pytest.raises(ValueError, match="decode 'compiled'"):
        TransformersBackend(str(tiny_qwen), decode="compiled")


def test_close_frees_the_model(tiny_qwen: Path) -> None:
    import weakref

    from selfjudge.shared.models.generation.backend import close_backend

    be = TransformersBackend(str(tiny_qwen))
    model = weakref.ref(be.model)
    close_backend(be)
    assert model() is None and not hasattr(be, "model")  # gone now, while `be` itself is still referenced
