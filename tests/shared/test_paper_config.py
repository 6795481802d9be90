"""configs/paper.yaml: it loads and validates (no weights), holds the paper's setting, and says
where every choice comes from."""

import re
from pathlib import Path

from selfjudge.shared.config import load_settings

PAPER = Path(__file__).parents[2] / "configs" / "paper.yaml"
TAGS = re.compile(r"#\s*\[(paper|summary|open|infra)\]")


def test_paper_config_validates_and_holds_the_papers_setting():
    s = load_settings(PAPER, environ={})
    assert s.model.base == "Qwen/Qwen2.5-VL-7B-Instruct" and s.model.backend == "vllm"
    assert s.source.kind == "llava_onevision"
    assert (s.synth.n_samples, s.synth.temperature, s.synth.top_k, s.synth.top_p, s.synth.majority_threshold) == (
        16,
        0.6,
        50,
        0.9,
        5,
    )
    assert s.synth.closed_labels == "majority" and s.synth.injection == "model" and s.synth.fallback_to_rule is False
    assert s.synth.alter_max_new_tokens >= 1.3 * s.synth.open_max_new_tokens
    assert s.filter.require_both_orders and s.filter.require_all_samples and s.filter.selection_holdout > 0
    assert (s.train.lr, s.train.epochs, s.train.method, s.train.distributed) == (1e-5, 5, "full", "fsdp")
    assert s.train.nproc == 8 and s.run.iterations == 4
    bench = {b.name: b for b in s.eval.benchmarks}
    assert set(bench) == {"vl-rewardbench", "mm-rewardbench"}
    assert (bench["vl-rewardbench"].k, bench["mm-rewardbench"].k) == (5, 1)
    assert all(b.parser == "official" for b in bench.values())


def test_every_setting_says_where_it_comes_from():
    leaves = 0
    for line in PAPER.read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped or stripped.endswith(":"):  # a comment line or a section header
            continue
        leaves += 1
        assert TAGS.search(line), f"no [paper]/[summary]/[open]/[infra] comment: {line.strip()}"
    assert leaves >= 50
