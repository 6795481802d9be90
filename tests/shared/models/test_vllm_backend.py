"""The vLLM backend on the tiny Qwen2.5-VL: image + text, parity with the transformers backend,
n samples, LoRA adapters, and Mllama refused. Needs vLLM (`make vllm`); SELFJUDGE_NO_VLLM=1 skips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from selfjudge.shared.models.generation import load as load_mod
from selfjudge.shared.models.generation import vllm_backend
from selfjudge.shared.models.generation.backend import ChatRequest, GenerationBackend, SamplingParams
from selfjudge.shared.models.generation.transformers_backend import TransformersBackend

from .conftest import check_n_samples, requests


@pytest.fixture(scope="module")
def hf(tiny_qwen: Path) -> TransformersBackend:
    return TransformersBackend(str(tiny_qwen), model_id="tiny", batch_size=4)


def test_generates_from_image_and_text(vllm_tiny) -> None:
    assert isinstance(vllm_tiny, GenerationBackend) and vllm_tiny.model_id == "tiny"
    red, blue = Image.new("RGB", (112, 112), "red"), Image.new("RGB", (112, 112), "blue")
    reqs = [
        ChatRequest(text="What colour is the circle?", images=[red], key="red"),
        ChatRequest(text="What colour is the circle?", images=[blue], key="blue"),
        ChatRequest(text="What colour is the circle?", images=[], key="none"),
    ]
    calls: list[tuple[int, int]] = []
    out = vllm_tiny.generate(reqs, SamplingParams(max_new_tokens=10), progress=lambda d, t: calls.append((d, t)))
    assert [g.key for g in out] == ["red", "blue", "none"]
    for g in out:
        assert len(g.texts) == 1 and g.texts[0] and 1 <= g.token_counts[0] <= 10
    assert out[0].prompt_tokens == out[2].prompt_tokens + 16 + 2  # 16 image tokens + vision start/end
    assert calls and calls[-1] == (3, 3) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    # the image reaches the model: a different image changes what it says
    assert out[0].texts != out[1].texts or out[0].texts != out[2].texts


def test_greedy_matches_transformers_token_for_token(vllm_tiny, hf: TransformersBackend) -> None:
    """fp32 on both sides: the same prompt ids, the same generated ids, the same Generation."""
    reqs = requests()
    params = SamplingParams(max_new_tokens=16)
    assert vllm_tiny.generate(reqs, params) == hf.generate(reqs, params)
    # and the raw ids, engine against model.generate, for 0, 1 and 2 images
    from vllm import SamplingParams as VSamplingParams

    reqs = reqs[:3]
    raw = vllm_tiny.llm.generate(
        [vllm_tiny.prompt(r) for r in reqs],
        VSamplingParams(temperature=0, max_tokens=16, stop_token_ids=hf.stop_ids),
        use_tqdm=False,
    )
    for r, o in zip(reqs, raw):
        enc = hf._encode([r])
        with torch.inference_mode():
            ids = hf.model.generate(
                **enc, do_sample=False, max_new_tokens=16, eos_token_id=hf.stop_ids, pad_token_id=hf.pad_id
            )
        assert list(o.prompt_token_ids) == enc["input_ids"][0].tolist(), r.key
        assert list(o.outputs[0].token_ids) == ids[0, enc["input_ids"].shape[1] :].tolist(), r.key


def test_n_samples(vllm_tiny) -> None:
    check_n_samples(vllm_tiny)


def test_engine_leaves_this_process_alone(vllm_tiny) -> None:
    """In-process, vLLM's CPU worker pins torch threads and stubs torch.set_num_threads: undone."""
    assert "skip_set_num_threads" not in torch.set_num_threads.__name__
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(before)


def test_too_many_images_is_refused(vllm_tiny) -> None:
    img = Image.new("RGB", (112, 112), "red")
    with pytest.raises(ValueError, match="at most 2"):
        vllm_tiny.generate([ChatRequest(text="x", images=[img] * 3, key="k")], SamplingParams(max_new_tokens=2))


def test_lora_adapter_matches_merged_model(vllm_tiny, tiny_qwen: Path, tmp_path: Path) -> None:
    """A PEFT adapter folder is served over its base with LoRARequest; greedy equals the merged model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from selfjudge.shared.config import LORA_TARGET

    torch.manual_seed(1)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=LORA_TARGET, init_lora_weights=False)  # B != 0
    peft_model = get_peft_model(model, lora)
    processor = AutoProcessor.from_pretrained(tiny_qwen)
    peft_model.save_pretrained(tmp_path / "adapter")
    processor.save_pretrained(tmp_path / "adapter")
    peft_model.merge_and_unload().save_pretrained(tmp_path / "merged")
    processor.save_pretrained(tmp_path / "merged")

    reqs = [r for r in requests() if len(r.images) <= 1][:3]
    params = SamplingParams(max_new_tokens=8)
    served = vllm_backend.VLLMBackend(str(tmp_path / "adapter"), dtype="float32", max_model_len=1024)
    try:
        assert served.lora is not None and served.base == str(tiny_qwen)
        got = served.generate(reqs, params)
    finally:
        served.close()
    assert got == TransformersBackend(str(tmp_path / "merged")).generate(reqs, params)
    assert got != vllm_tiny.generate(reqs, params)  # the adapter changes the outputs


def _mllama_folder(path: Path) -> Path:
    from transformers import MllamaConfig

    MllamaConfig().save_pretrained(path)  # the config is all the refusal reads
    return path


def test_mllama_is_refused(tmp_path: Path) -> None:
    """Refused before vLLM is imported, so this runs with SELFJUDGE_NO_VLLM=1 too."""
    folder = _mllama_folder(tmp_path / "mllama")
    for make in (lambda: vllm_backend.VLLMBackend(str(folder)), lambda: load_mod.load_backend("vllm", str(folder))):
        with pytest.raises(ValueError, match="vLLM does not serve Mllama.*use the transformers backend"):
            make()
    adapter = tmp_path / "mllama_lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(folder), "r": 8})
    )
    with pytest.raises(ValueError, match="use the transformers backend"):
        vllm_backend.VLLMBackend(str(adapter))


def test_load_backend_dispatch(monkeypatch: pytest.MonkeyPatch, tiny_qwen: Path) -> None:
    seen = {}

    class Fake:
        def __init__(self, model_path: str, **kw: object) -> None:
            seen.update(kw, model_path=model_path)

    monkeypatch.setattr(load_mod, "VLLMBackend", Fake)
    monkeypatch.setattr(load_mod, "TransformersBackend", Fake)
    server_only = dict(endpoints=["http://x"], served_model_name="m", api_key="k", concurrency=2, request_timeout=1.0)
    for kind in ("vllm", "transformers"):  # every ModelConfig setting may be passed; server ones dropped
        seen.clear()
        be = load_mod.load_backend(kind, str(tiny_qwen), model_id="abc", device="cpu", dtype="float32",
                                   batch_size=8, **server_only)  # fmt: skip
        assert isinstance(be, Fake) and seen == {"model_path": str(tiny_qwen), "model_id": "abc", "device": "cpu",
                                                 "dtype": "float32", "batch_size": 8}  # fmt: skip
    with pytest.raises(NotImplementedError, match="transformers, vllm, openai"):
        load_mod.load_backend("nope", str(tiny_qwen))


def test_config_engine_settings_reach_the_engine(vllm_tiny, tiny_qwen: Path) -> None:
    """model.vllm (YAML / SELFJUDGE__MODEL__VLLM__*) -> load_backend -> vllm.LLM's own config."""
    from selfjudge.shared.config import ConfigError, load_settings

    m = load_settings(environ={"SELFJUDGE__MODEL__VLLM__MAX_NUM_SEQS": "3"}, overrides={"model": {"vllm": {
        "max_model_len": 512, "gpu_memory_utilization": 0.5, "max_num_batched_tokens": 1024, "max_images": 2,
        "engine_kwargs": {"seed": 11}}}}).model  # fmt: skip
    be = load_mod.load_backend("vllm", str(tiny_qwen), dtype="float32", device="cpu", decode="plain",
                               vllm=m.vllm.backend_kwargs())  # fmt: skip
    try:
        cfg = be.llm.llm_engine.vllm_config
        assert cfg.scheduler_config.max_num_seqs == 3 and cfg.model_config.max_model_len == 512
        assert cfg.scheduler_config.max_num_batched_tokens == 1024 and cfg.cache_config.gpu_memory_utilization == 0.5
        assert cfg.model_config.seed == 11 and be.max_images == 2
        assert cfg.model_config.enforce_eager  # None on CPU: eager
        assert be.generate(requests()[:2], SamplingParams(max_new_tokens=4))[0].token_counts[0] >= 1
    finally:
        be.close()
    # enforce_eager: None follows the device (CUDA graphs on CUDA), an explicit value is kept
    assert load_settings(environ={}).model.vllm.backend_kwargs()["enforce_eager"] is None
    assert load_settings(environ={"SELFJUDGE__MODEL__VLLM__ENFORCE_EAGER": "false"}).model.vllm.backend_kwargs()[
        "enforce_eager"] is False  # fmt: skip
    with pytest.raises(ConfigError, match="in_process: false"):
        load_settings(environ={}, overrides={"model": {"vllm": {"tensor_parallel_size": 2}}})
    tp = load_settings(environ={}, overrides={"model": {"vllm": {"tensor_parallel_size": 2, "in_process": False}}})
    assert tp.model.vllm.backend_kwargs()["engine_kwargs"]["tensor_parallel_size"] == 2
