"""The one config object: defaults < YAML file < environment.

Environment overrides use `SELFJUDGE__<SECTION>__<KEY>`, e.g.
`SELFJUDGE__DATABASE__URL=postgresql+psycopg://...` or `SELFJUDGE__TRAIN__LR=2e-5`.
Unknown keys and wrong types fail at start with one message naming them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunConfig(Section):
    name: str = "demo"
    iterations: int = Field(2, ge=1)
    seed: int = 0
    prompts_per_iteration: int = Field(64, ge=1)
    shard_size: int = Field(32, ge=1)  # items per task message
    heldout_pairs: int = Field(48, ge=0)  # generator-labelled pairs, never trained on
    work_dir: str = ".selfjudge"  # local caches (checkpoint downloads, embedded store/db)
    max_retries: int = Field(3, ge=0)  # a failing task is retried with backoff, then dead-lettered
    # An unreachable database, store, broker or OpenAI-compatible endpoint is an outage, not a failure
    # of the task: it is retried (backoff up to 30 s) for this long without using up max_retries.
    outage_seconds: float = Field(1800, ge=0)
    train_lease_seconds: float = Field(600, gt=0)  # a trainer silent this long is presumed dead; training re-sent


class DatabaseConfig(Section):
    url: str = ""  # empty = sqlite file under run.work_dir (embedded mode)


class BrokerConfig(Section):
    url: str = ""  # empty = in-process queue (embedded mode); else amqp://user:pass@host:5672//


class StoreConfig(Section):
    kind: Literal["local", "s3"] = "local"
    root: str = ""  # local: folder (empty = <work_dir>/store)
    endpoint: str = "127.0.0.1:9000"
    bucket: str = "selfjudge"
    access_key: str = ""  # from the environment / .env only
    secret_key: str = ""
    secure: bool = False
    region: str = "us-east-1"
    retries: int = Field(6, ge=0)  # S3: a failed call is tried again this often (backoff 0.5 s .. 10 s)


class VLLMConfig(Section):
    """Engine settings of model.backend "vllm" (arguments of `vllm.LLM`)."""

    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)  # share of the GPU's memory the engine may take
    max_model_len: int | None = Field(None, ge=1)  # None: the model's own context length
    tensor_parallel_size: int = Field(1, ge=1)  # GPUs one engine spans (> 1 needs in_process: false)
    enforce_eager: bool | None = None  # None: eager on CPU, CUDA graphs on CUDA
    max_num_seqs: int | None = Field(None, ge=1)  # sequences decoded at once (None: vLLM's default)
    max_num_batched_tokens: int | None = Field(None, ge=1)
    max_images: int = Field(1, ge=1)  # images one request may carry
    kv_cache_gib: int = Field(1, ge=1)  # vLLM on CPU only: KV cache GiB (VLLM_CPU_KVCACHE_SPACE, whole GiB)
    in_process: bool = True  # the engine in the worker's process; false: vLLM's engine/worker processes
    engine_kwargs: dict[str, Any] = {}  # any further vllm.LLM arguments, applied last

    @model_validator(mode="after")
    def _tp_needs_processes(self) -> "VLLMConfig":
        if self.tensor_parallel_size > 1 and self.in_process:
            raise ValueError(
                f"tensor_parallel_size {self.tensor_parallel_size} needs one process per GPU: "
                "set model.vllm.in_process: false"
            )
        return self

    def backend_kwargs(self) -> dict[str, Any]:
        """VLLMBackend keyword arguments (engine settings that are None are left to vLLM)."""
        engine = {
            k: v
            for k, v in (
                ("gpu_memory_utilization", self.gpu_memory_utilization),
                ("tensor_parallel_size", self.tensor_parallel_size),
                ("max_num_seqs", self.max_num_seqs),
                ("max_num_batched_tokens", self.max_num_batched_tokens),
            )
            if v is not None
        }
        return dict(
            max_model_len=self.max_model_len,
            enforce_eager=self.enforce_eager,
            max_images=self.max_images,
            kv_cache_gib=self.kv_cache_gib,
            in_process=self.in_process,
            engine_kwargs=engine | self.engine_kwargs,
        )


class ModelConfig(Section):
    base: str = "tiny"  # "tiny" (built offline) | a local folder | a hub id
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 8
    trust_remote_code: bool = False
    cpu_threads: int = Field(
        0, ge=0
    )  # torch CPU threads per process (0 = torch's default); 1 when many workers share few cores
    tiny_pretrain_steps: int = 300  # steps of scene captioning/QA for the tiny base model
    # image pixel bounds given to the processor (Qwen-VL: its min/max_pixels); 0 = the checkpoint's own.
    # max_pixels only lowers the processor's cap (e.g. 1003520 = 1280 Qwen visual tokens); an example
    # over train.max_length gets smaller images down to min_pixels, else it is dropped (never cut)
    max_pixels: int = Field(0, ge=0)
    min_pixels: int = Field(0, ge=0)
    # backend "openai": OpenAI-compatible servers (e.g. `vllm serve`), requests spread round-robin
    endpoints: list[str] = []  # base URLs, http://host:8000[/v1]; env: comma-separated
    served_model_name: str = ""  # "" = the first model the server lists
    concurrency: int = Field(16, ge=1)  # requests in flight
    request_timeout: float = Field(120, gt=0)  # seconds per HTTP request
    api_key: str = ""  # else env OPENAI_API_KEY; masked by redacted()
    # openai + train.method lora: each new judge is loaded into the servers as a LoRA adapter
    # (POST /v1/load_lora_adapter; the servers run with --enable-lora and
    # VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). The adapter folder's path as the servers see it:
    # adapter_dir/<checkpoint hash> ("" = the worker's own path, i.e. the same filesystem).
    adapter_dir: str = ""
    # transformers backend: "static" = a static KV cache (decode compiled by torch.compile on CUDA)
    hf_decode: Literal["plain", "static"] = "plain"
    vllm: VLLMConfig = VLLMConfig()

    @field_validator("endpoints", mode="before")
    @classmethod
    def _split_endpoints(cls, v: Any) -> Any:
        return [e.strip() for e in v.split(",") if e.strip()] if isinstance(v, str) else v


class SourceConfig(Section):
    kind: Literal["scenes", "jsonl", "folder", "llava_onevision", "hf_datasets"] = "scenes"
    # jsonl: the manifest; folder: the image folder; llava_onevision: a parquet file, a folder of
    # them (searched recursively, e.g. a local copy of lmms-lab/LLaVA-OneVision-Data) or a glob;
    # hf_datasets: a Hugging Face datasets folder (save_to_disk arrow files or parquet shards).
    # Any of them may be s3://bucket/key on the store's S3 server (store.endpoint and keys).
    # Every iteration draws its prompts by a seeded permutation of the records (shared/sources/stream.py).
    path: str = ""
    instructions: str = ""  # folder: a text file of instructions, one per line (default: the folder's
    #                                 instructions.txt if present, else "Describe the image.")
    cache_dir: str = ""  # line offsets / listings / S3 arrow copies (empty = <work_dir>/cache/sources)
    image_size: int = 112
    max_objects: int = Field(5, ge=2, le=8)  # scenes: objects per image (1..max_objects); 2+ for position questions
    object_scale: float = Field(1.0, gt=0, le=3)  # scenes: object size multiplier (objects are 18-31 px at 1.0)
    layout: Literal["free", "grid"] = "free"  # scenes: objects anywhere, or one per cell of a 2 x 2 grid
    # duplicate prompts (same image bytes + normalised instruction) are set aside as "duplicate":
    # "iteration" = within one iteration's draw, "run" = also against earlier iterations, "off"
    dedup: Literal["off", "iteration", "run"] = "iteration"
    llava_subsets: list[str] = []  # llava_onevision: keep only these data_source values (empty = all)


class SynthConfig(Section):
    model: Literal["base", "judge"] = "base"  # which checkpoint writes the responses
    n_samples: int = Field(16, ge=1)
    temperature: float = 0.6
    top_k: int = 50
    top_p: float = 0.9
    majority_threshold: int = Field(5, ge=1)
    max_new_tokens: int = 64
    open_max_new_tokens: int = 96
    # --- open vs closed, for prompts whose source says kind "auto"
    # cues: answer-format cues only; samples: sample n_samples answers and decide by their length and
    # agreement; both: a strong cue decides, otherwise the samples do (they are reused as votes)
    classify: Literal["cues", "samples", "both"] = "both"
    trust_source_kind: bool = True  # False: class every prompt, even those whose source says open/closed
    classify_max_words: int = Field(5, ge=1)  # sampled answers this short (median words) ...
    classify_min_agreement: float = Field(0.3, ge=0, le=1)  # ... and whose top answer has this share: closed
    # --- closed-ended labels: majority vote (paper) or the source's gold answer (ablation)
    closed_labels: Literal["majority", "gold"] = "majority"
    # --- open-ended: how the rejected response gets its errors
    injection: Literal["model", "rule", "both"] = "model"  # both: each prompt drawn with model_share
    model_share: float = Field(0.5, ge=0, le=1)
    # a rejected model alteration falls back to the rule-based perturber; None = only in the built-in
    # scenes world (source.kind scenes), where word swaps are true errors; elsewhere the prompt is set aside.
    # The share of open pairs that fell back is in `selfjudge status` and the report, per iteration.
    fallback_to_rule: bool | None = None
    style_mimic_share: float = Field(0.5, ge=0, le=1)  # model alterations that use the style-mimic prompt
    max_length_ratio: float = Field(1.3, ge=1)  # style-mimic: len(rejected)/len(original) in [1/r, r]
    detail_max_length_ratio: float = Field(2.0, ge=1)  # detail alteration and rule perturbation
    min_word_overlap: float = Field(0.5, ge=0, le=1)  # style-mimic: share of the original's words kept
    detail_min_word_overlap: float = Field(0.2, ge=0, le=1)
    alter_samples: int = Field(2, ge=1)  # candidate alterations per prompt; the first valid one is used
    alter_temperature: float = 0.7
    alter_top_p: float = 0.9
    alter_max_new_tokens: int = Field(128, ge=1)
    # an alteration may generate at least this times the original's budget (open_max_new_tokens), so a
    # rewrite of a full-length answer is not cut short (and then failed by the length check)
    alter_budget_ratio: float = Field(1.3, ge=1)
    rule_max_edits: int = Field(2, ge=1)  # rule perturber: error types injected per response (1..n)

    @model_validator(mode="after")
    def _threshold_fits(self) -> "SynthConfig":
        if self.majority_threshold > self.n_samples:
            raise ValueError(
                f"majority_threshold ({self.majority_threshold}) is more than n_samples "
                f"({self.n_samples}): no prompt could ever reach it"
            )
        return self


class ReasonConfig(Section):
    temperature: float = 0.0
    top_p: float = 1.0
    samples_per_order: int = Field(1, ge=1)
    max_new_tokens: int = 96


class FilterConfig(Section):
    require_both_orders: bool = True  # paper: right with the preferred response shown first and second
    require_all_samples: bool = True  # every sample of both orders right; False: min_sample_agreement
    min_sample_agreement: float = Field(0.5, gt=0, le=1)  # share of an order's samples that must be right
    balance: bool = True  # as many "A is better" as "B is better" examples per shard
    max_per_prompt: int = Field(0, ge=0)  # traces kept per prompt (pair), orders alternating; 0 = no cap
    # share of prompts (chosen by a hash of their source id, so the same prompts every iteration) whose
    # pairs are judged but never trained on: the label-free checkpoint-selection set. 0 = use all pairs.
    selection_holdout: float = Field(0.0, ge=0, le=1)
    # the selection set (shared/selection.py): at most this many of iteration 1's holdout pairs, judged by
    # every checkpoint (the base by iteration 1's reasoner, checkpoint k by the evaluator of iteration k)
    selection_max_pairs: int = Field(256, ge=1)


# LoRA on the language model's attention and MLP projections only (vision towers use the same names).
LORA_TARGET = r".*(language_model|text_model).*layers\.\d+\.(self_attn|cross_attn|mlp)\.(q|k|v|o|gate|up|down)_proj"


def _not_a_setting(default: Any, **kw: Any) -> Any:
    """A TrainConfig field that is not a `train:` setting: refused in the section, left out of its dump."""
    return Field(default, exclude=True, **kw)


class TrainConfig(Section):
    """The `train:` section, and the one config `sft` takes (shared/models/sft/).

    The fields made with `_not_a_setting` are not read from the `train:` section (nor dumped with
    the settings): the trainer fills seed, dtype, device, max_pixels and min_pixels in from `run:`
    and `model:` (services/trainer/stage.train_config); the others are knobs that only direct
    callers of `sft` (the base-model builder, bench, tests) set.
    """

    lr: float = 1e-5
    epochs: int = 5
    batch_size: int = 4  # examples per micro-batch (on average), per process
    grad_accum: int = 1  # micro-batches per optimizer step (on average), per process
    max_length: int = 1024
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    seed: int = _not_a_setting(0)  # the trainer: run.seed + iteration
    # dtype of the written checkpoint (and of the weights under precision "auto" on CPU); the trainer: model.dtype
    dtype: Literal["float32", "bfloat16", "float16"] = _not_a_setting("float32")  # shared/models/dtypes.py's names
    device: str = _not_a_setting("cpu")  # the trainer: model.device; "cuda" under torchrun means cuda:LOCAL_RANK
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup", "constant"] = "cosine"
    # auto: bf16 autocast over fp32 weights on CUDA; on CPU the weights stay in `dtype` (model.dtype)
    precision: Literal["auto", "fp32", "bf16-mixed", "bf16"] = "auto"
    method: Literal["full", "lora"] = "full"
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_merge: bool = True  # True: checkpoints are merged full folders; False: adapters over the base
    lora_target: str = _not_a_setting(LORA_TARGET)
    # full fine-tuning: keep the vision encoder's weights as they are (its projector into the language
    # model still trains), as LLaVA-style recipes do; LoRA never touches the vision encoder anyway
    freeze_vision: bool = False
    # optimizer steps between resumable saves (used with sft's resume_from; 0 = never). Direct
    # callers of sft that train without resume_from (the base-model builder) pass 0.
    save_every: int = Field(100, ge=0)
    gradient_checkpointing: bool = False
    distributed: Literal["none", "ddp", "fsdp"] = "none"  # ddp/fsdp: nproc processes via torchrun (sft/launch.py)
    nproc: int = Field(1, ge=1)  # processes (GPUs) per trainer worker
    # padded tokens per micro-batch (length-sorted within each random optimizer step):
    # 0 = auto (batch_size x median example length), -1 = exactly batch_size examples each.
    # An optimizer step always has batch_size * grad_accum * world examples.
    micro_batch_tokens: int = Field(0, ge=-1)
    length_grouping: bool = _not_a_setting(False)  # steps of similar-length examples (the older plan; see step_plan)
    # padding-free micro-batches (examples end to end, per-example position ids): auto = where the
    # model supports it (Qwen2/2.5-VL), on, off (padded batches)
    packing: Literal["auto", "on", "off"] = "auto"
    # images are scaled down to at most this many pixels (0: as the processor does); the trainer: model.max_pixels
    max_pixels: int = _not_a_setting(0, ge=0)
    # an over-long example's images shrink no further than this, then it is dropped; the trainer: model.min_pixels
    min_pixels: int = _not_a_setting(0, ge=0)
    loader_workers: int = Field(2, ge=0)  # DataLoader processes fetching/encoding examples ahead (0: in-process)
    max_steps: int = _not_a_setting(
        0, ge=0
    )  # stop after this many optimizer steps (0: all epochs; the schedule spans what runs)
    # transformers attention: "" = packed rows on CUDA use varlen.NAME (FlashAttention varlen) when it passes its
    # check, else transformers' default (sdpa); or any name transformers takes (eager, sdpa, selfjudge_varlen, ...)
    attn_implementation: str = _not_a_setting("")
    # speed-ups, off until bench/gpu_bench.py shows they pay on a card (shared/models/sft/speed.py)
    vision_varlen: bool = False  # Qwen-VL vision windows in one varlen attention call per block
    compile: bool = False  # torch.compile of each decoder layer and vision block (not with fsdp)
    kernels: Literal["", "liger"] = ""  # liger: Liger RMSNorm/SwiGLU + fused linear cross-entropy (liger-kernel, CUDA)

    @model_validator(mode="after")
    def _compile_not_with_fsdp(self) -> TrainConfig:
        if self.compile and self.distributed == "fsdp":
            raise ValueError("train.compile is not supported with distributed: fsdp")
        return self

    @classmethod
    def not_settings(cls) -> list[str]:
        """The fields the `train:` section does not take."""
        return [name for name, f in cls.model_fields.items() if f.exclude]

    def as_dict(self) -> dict[str, Any]:
        """Every field, in order (`model_dump` leaves the non-settings out): what a training run records."""
        return {name: getattr(self, name) for name in type(self).model_fields}


class BenchmarkConfig(Section):
    """A published benchmark the evaluator scores every checkpoint on (services/evaluator/benchmarks.py)."""

    name: Literal["vl-rewardbench", "mm-rewardbench"]
    path: str  # .parquet / data.jsonl / all_data.json, their folder, or s3://bucket/key
    k: int | None = Field(None, ge=1)  # official samples per item (None: vl-rewardbench 5, mm-rewardbench 1)
    images: str = ""  # image root (default: the data file's folder)
    parser: Literal["official", "selfjudge"] = "official"  # official regex / [[A]] test, or shared.verdict
    max_new_tokens: int | None = None  # None: eval.max_new_tokens
    limit: int = Field(0, ge=0)  # only the first N records (0 = all)


class EvalConfig(Section):
    max_new_tokens: int = 96
    benchmarks: list[BenchmarkConfig] = []


class MetricsConfig(Section):
    port: int = 0  # 0 = do not serve; compose sets 9100 per container
    addr: str = "127.0.0.1"


class Settings(Section):
    run: RunConfig = RunConfig()
    database: DatabaseConfig = DatabaseConfig()
    broker: BrokerConfig = BrokerConfig()
    store: StoreConfig = StoreConfig()
    model: ModelConfig = ModelConfig()
    source: SourceConfig = SourceConfig()
    synth: SynthConfig = SynthConfig()
    reason: ReasonConfig = ReasonConfig()
    filter: FilterConfig = FilterConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    metrics: MetricsConfig = MetricsConfig()

    @field_validator("train", mode="before")
    @classmethod
    def _train_settings_only(cls, v: Any) -> Any:
        wrong = [k for k in TrainConfig.not_settings() if isinstance(v, dict) and k in v]
        if wrong:
            raise PydanticCustomError("not_a_train_setting", "{keys}: not train settings (seed comes from run.seed; "
                                      "dtype, device, max_pixels, min_pixels from model; the others are only for "
                                      "direct callers of sft)", {"keys": ", ".join(wrong)})  # fmt: skip
        return v

    @property
    def embedded(self) -> bool:
        return not self.broker.url

    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{Path(self.run.work_dir).resolve() / 'selfjudge.db'}"

    def redacted(self) -> dict:
        """The config as a dict with secrets masked, safe to log or store."""
        data = self.model_dump()
        for key in ("access_key", "secret_key"):
            if data["store"][key]:
                data["store"][key] = "***"
        if data["model"]["api_key"]:
            data["model"]["api_key"] = "***"
        for sect, key in (("database", "url"), ("broker", "url")):
            data[sect][key] = _mask_url(data[sect][key])
        return data


class ConfigError(ValueError):
    """A config problem, reported in one message at start."""


ENV_PREFIX = "SELFJUDGE__"


def _mask_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value  # pydantic turns "2e-5", "true", "8" into the field's type
    return out


def deep_merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, section by section (nested dicts merged, other values replaced)."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    path: str | Path | None = None, environ: dict[str, str] | None = None, overrides: dict | None = None
) -> Settings:
    """Defaults, then the YAML file, then SELFJUDGE__* variables, then `overrides`."""
    data: dict = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top")
    data = deep_merge(data, _env_overrides(dict(os.environ if environ is None else environ)))
    data = deep_merge(data, overrides or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid config: {problems}") from None
