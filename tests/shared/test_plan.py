"""`selfjudge plan` on CPU, with the real config.json files of Qwen2.5-VL-7B-Instruct and
Llama-3.2-11B-Vision-Instruct written here (no weights), against figures computed by hand."""

import json
import math
from pathlib import Path

import pytest

from selfjudge.cli import main
from selfjudge.shared.config import load_settings
from selfjudge.shared.plan import GIB, Assumptions, count_params, find_config, kv_bytes_per_token, make_plan

PAPER = Path(__file__).parents[2] / "configs" / "paper.yaml"

QWEN = {  # Qwen/Qwen2.5-VL-7B-Instruct config.json
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "model_type": "qwen2_5_vl",
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.41.2",
    "use_cache": True,
    "use_sliding_window": False,
    "vision_config": {
        "depth": 32,
        "hidden_act": "silu",
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "in_chans": 3,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "spatial_patch_size": 14,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
        "temporal_patch_size": 2,
    },
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vocab_size": 152064,
}
LLAMA = {  # meta-llama/Llama-3.2-11B-Vision-Instruct config.json
    "architectures": ["MllamaForConditionalGeneration"],
    "image_token_index": 128256,
    "model_type": "mllama",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "text_config": {
        "model_type": "mllama_text_model",
        "hidden_act": "silu",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_hidden_layers": 40,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "cross_attention_layers": [3, 8, 13, 18, 23, 28, 33, 38],
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "tie_word_embeddings": False,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "pad_token_id": 128004,
        "dropout": 0,
        "initializer_range": 0.02,
        "use_cache": True,
    },
    "vision_config": {
        "model_type": "mllama_vision_model",
        "hidden_act": "gelu",
        "hidden_size": 1280,
        "image_size": 560,
        "intermediate_size": 5120,
        "intermediate_layers_indices": [3, 7, 15, 23, 30],
        "max_num_tiles": 4,
        "norm_eps": 1e-05,
        "num_attention_heads": 16,
        "num_channels": 3,
        "num_global_layers": 8,
        "num_hidden_layers": 32,
        "patch_size": 14,
        "supported_aspect_ratios": [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]],
        "vision_output_dim": 7680,
    },
}


@pytest.fixture
def qwen(tmp_path):
    (tmp_path / "qwen").mkdir()
    (tmp_path / "qwen" / "config.json").write_text(json.dumps(QWEN))
    return tmp_path / "qwen"


@pytest.fixture
def llama(tmp_path):
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps(LLAMA))
    return tmp_path / "llama"


def test_parameters_by_hand():
    # Qwen2.5-VL-7B text layer: q (3584x3584 + bias), k and v (3584x512 + bias), o, MLP 3 x 3584 x 18944, 2 norms
    layer = (3584 * 3584 + 3584) + 2 * (3584 * 512 + 512) + 3584 * 3584 + 3 * 3584 * 18944 + 2 * 3584
    assert layer == 233_057_792
    text = 28 * layer + 2 * 152064 * 3584 + 3584  # untied embeddings and head, final norm
    block = 2 * 1280 + (1280 * 3840 + 3840) + (1280 * 1280 + 1280) + 2 * (1280 * 3420 + 3420) + (3420 * 1280 + 1280)
    vision = 3 * 2 * 14 * 14 * 1280 + 32 * block
    merger = 1280 + (5120 * 5120 + 5120) + (5120 * 3584 + 3584)
    assert count_params(QWEN) == {"text": text, "vision": vision, "projector": merger, "total": 8_292_166_656}
    # Llama-3.2-11B-Vision: 32 self-attention + 8 cross-attention layers (q/k norms, 2 gates), vocab + 8 rows
    self_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    text = 128264 * 4096 + 32 * self_layer + 8 * (self_layer + 2 * 128 + 2) + 4096 + 128256 * 4096
    vlayer = 4 * 1280 * 1280 + (1280 * 5120 + 5120) + (5120 * 1280 + 1280) + 4 * 1280
    vision = (
        3 * 14 * 14 * 1280
        + 1280
        + 1601 * 1280
        + 1
        + 9 * 4 * 1601 * 1280
        + 2 * (9 * 4 * 1280 + 1)
        + 4 * 1280
        + 32 * vlayer
        + 8 * (vlayer + 2)
    )
    assert count_params(LLAMA) == {
        "text": text,
        "vision": vision,
        "projector": 7680 * 4096 + 4096,
        "total": 10_670_220_835,
    }
    assert kv_bytes_per_token(QWEN, 2) == 2 * 28 * 4 * 128 * 2
    assert kv_bytes_per_token(LLAMA, 2) == 2 * 32 * 8 * 128 * 2  # cross-attention layers hold the image once


def test_the_paper_plan_by_hand(qwen):
    settings = load_settings(PAPER, environ={}, overrides={"model": {"base": str(qwen)}})
    plan = make_plan(settings)
    stages = {s.name: s for s in plan.stages}
    # synthesizer: 20,000 prompts all sampled 16 x 64 (classify "both"); 10,000 open: 512 + 2 alterations x 666
    assert stages["synthesizer"].tokens == 20000 * 16 * 64 + 10000 * (512 + 2 * 666)
    assert stages["reasoner"].tokens == 20000 * 2 * 1024  # both orders, one sample each
    assert stages["evaluator"].tokens == 1250 * (5 + 2) * 1024 + 5211 * (1 + 2) * 1024
    image = math.ceil(640 / 28) * math.ceil(480 / 28)  # 23 x 18 = 414 merged patches
    judge_len = 600 + image + 2 * 512 + 1024
    assert stages["trainer"].tokens == round(20000 * 2 * 0.3) * judge_len * 5
    rate = 8.3e9 / 8_292_166_656
    assert stages["synthesizer"].gpu_hours == pytest.approx(stages["synthesizer"].tokens / (3000 * rate) / 3600)
    assert stages["trainer"].gpu_hours == pytest.approx(stages["trainer"].tokens / (2992 * rate) / 3600)
    assert plan.gpu_hours_run == pytest.approx(
        4 * sum(s.gpu_hours for s in plan.stages) + stages["evaluator"].gpu_hours
    )
    assert stages["synthesizer"].memory_gib["weights"] == round(8_292_166_656 * 2 / GIB, 2)
    kv = 64 * (600 + image + 512 + 666) * 57344 / GIB
    assert stages["synthesizer"].memory_gib["kv_cache"] == round(kv, 2)
    train = stages["trainer"].memory_gib  # FSDP over 8 GPUs, fp32 master weights, AdamW
    assert (train["weights"], train["gradients"], train["optimizer"]) == (
        round(8_292_166_656 * 4 / 8 / GIB, 2),
    ) * 2 + (round(8_292_166_656 * 8 / 8 / GIB, 2),)
    assert train["activations"] == round((28 * 4 * judge_len * 3584 * 2 + 4 * judge_len * 18944 * 8) / GIB, 2)
    assert stages["trainer"].gpus == 8 and not [w for s in plan.stages for w in s.warnings] and not plan.warnings


def test_warnings_when_a_stage_does_not_fit(llama):
    settings = load_settings(
        PAPER, environ={}, overrides={"model": {"base": str(llama)}, "train": {"distributed": "none", "nproc": 1}}
    )
    plan = make_plan(settings, Assumptions(gpu_memory_gib=80))
    assert plan.params["total"] == 10_670_220_835
    assert any("vLLM does not serve Mllama" in w for w in plan.warnings)
    trainer = next(s for s in plan.stages if s.name == "trainer")
    assert trainer.memory_gib["optimizer"] == round(10_670_220_835 * 8 / GIB, 2)
    assert trainer.warnings and "more than 80 GiB" in trainer.warnings[0]
    synth = next(s for s in plan.stages if s.name == "synthesizer")
    cross = 2 * 8 * 8 * 128 * 2 * (2 * 1601)  # 640x480 -> 2 tiles of 1,601 vision tokens, 8 cross layers
    assert synth.memory_gib["kv_cache"] == round(64 * ((600 + 1 + 512 + 666) * 131072 + cross) / GIB, 2)


def test_the_config_comes_from_the_hub_cache_only(tmp_path, monkeypatch):
    snap = tmp_path / "hub" / "models--Qwen--Qwen2.5-VL-7B-Instruct" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(QWEN))
    (tmp_path / "hub" / "models--Qwen--Qwen2.5-VL-7B-Instruct" / "refs").mkdir()
    (tmp_path / "hub" / "models--Qwen--Qwen2.5-VL-7B-Instruct" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert find_config("Qwen/Qwen2.5-VL-7B-Instruct") == snap / "config.json"
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        find_config("meta-llama/Llama-3.2-11B-Vision-Instruct")


def test_cli_prints_the_plan_and_overrides(qwen, capsys):
    assert main(["plan", "--config", str(PAPER), "--set", f"model.base={qwen}"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 8.292B" in out and "GPU-hours per iteration" in out and "WARNING" not in out
    assert (
        main(
            [
                "plan",
                "--config",
                str(PAPER),
                "--set",
                f"model.base={qwen}",
                "--json",
                "--throughput",
                "generate_vllm=6000",
                "--assume",
                "gpu_memory_gib=16",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["throughputs"]["generate_vllm"] == 6000 and data["assumptions"]["gpu_memory_gib"] == 16
    assert any("more than 14 GiB" in w for s in data["stages"] for w in s["warnings"])  # 16 GiB x 0.9 for vLLM
    assert main(["plan", "--config", str(PAPER), "--set", f"model.base={qwen}", "--throughput", "fast=1"]) == 2
