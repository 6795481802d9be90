"""LLaVA-OneVision-Data as a prompt source (the paper's prompt pool).

Layout (HF lmms-lab/LLaVA-OneVision-Data: one folder per subset, parquet shards in it):
    id: str, image: {bytes: binary, path: str} (null for text-only rows),
    conversations: list<{from: "human"|"gpt", value: str}>, data_source: str
`source.path` is one parquet file, a folder (searched recursively, sorted), a glob, or an
s3://bucket/prefix (read by byte range).

Each row gives one prompt: the first human turn (its "<image>" placeholder removed) is the
instruction, the first gpt turn after it is the reference answer (`gold`, used only by the
`synth.closed_labels: gold` ablation and for analysis), kind "auto" (the synthesizer decides),
question_type = data_source (the subset), source "llava_onevision".

The reading is tables.TableSource's: only the row groups holding drawn rows are read and only
drawn rows' images decoded; bad rows (no image, no human turn, undecodable image, duplicate id,
duplicate prompt) go to `rejected` with their record id and reason. `subsets` keeps only the
listed data_source values.
"""

from __future__ import annotations

from selfjudge.shared.sources.tables import TableSource, first_turns, normalize_instruction, prompt_key

__all__ = ["LlavaOneVisionSource", "first_turns", "normalize_instruction", "prompt_key"]


class LlavaOneVisionSource(TableSource):
    name = "llava_onevision"
    prefix = "llava"

    def _question_type(self, row: dict) -> str:
        return str(row.get("data_source") or "llava")[:40]
