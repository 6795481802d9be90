import pytest

from selfjudge.shared.config import ConfigError, TrainConfig, load_settings


def test_defaults_are_the_papers():
    s = load_settings(environ={})
    assert (s.synth.n_samples, s.synth.temperature, s.synth.top_k, s.synth.top_p) == (16, 0.6, 50, 0.9)
    assert s.synth.majority_threshold == 5 and s.train.lr == 1e-5 and s.train.epochs == 5
    assert s.embedded and s.database_url().startswith("sqlite:///")


def test_yaml_then_env_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run:\n  iterations: 3\ntrain:\n  lr: 0.001\n")
    s = load_settings(
        path,
        environ={"SELFJUDGE__TRAIN__LR": "2e-5", "SELFJUDGE__MODEL__TRUST_REMOTE_CODE": "true"},
        overrides={"run": {"seed": 7}},
    )
    assert s.run.iterations == 3 and s.train.lr == 2e-5 and s.model.trust_remote_code is True and s.run.seed == 7


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"SELFJUDGE__TRAIN__LRR": "1"}, "train.lrr"),
        ({"SELFJUDGE__TRAIN__EPOCHS": "five"}, "train.epochs"),
        ({"SELFJUDGE__STORE__KIND": "ftp"}, "store.kind"),
    ],
)
def test_bad_settings_fail_with_one_clear_message(environ, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


def test_the_train_section_is_the_one_train_config():
    """`train:` is the TrainConfig sft takes; the fields other sections fill in (seed, dtype, device,
    pixel bounds) and sft-only knobs are neither taken from it nor dumped with the settings."""
    s = load_settings(environ={})
    assert type(s.train) is TrainConfig and s.train.save_every == 100
    assert not set(TrainConfig.not_settings()) & set(s.model_dump()["train"])
    assert list(TrainConfig().as_dict())[:8] == [
        "lr",
        "epochs",
        "batch_size",
        "grad_accum",
        "max_length",
        "warmup_ratio",
        "weight_decay",
        "seed",
    ]
    with pytest.raises(ConfigError, match="train: seed, device: not train settings"):
        load_settings(environ={"SELFJUDGE__TRAIN__SEED": "1", "SELFJUDGE__TRAIN__DEVICE": "cuda"})
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="float64")


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml", environ={})
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(tmp_path / "list.yaml", environ={})


def test_secrets_are_redacted():
    s = load_settings(
        environ={
            "SELFJUDGE__STORE__SECRET_KEY": "hunter2",
            "SELFJUDGE__DATABASE__URL": "postgresql+psycopg://u:pw@db/x",
        }
    )
    red = s.redacted()
    assert red["store"]["secret_key"] == "***" and "pw" not in red["database"]["url"]
    assert "hunter2" not in str(red)
