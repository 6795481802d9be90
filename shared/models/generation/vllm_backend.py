"""Generation with vLLM's offline engine (`vllm.LLM`): same interface and outputs as TransformersBackend.

Prompts are built with the checkpoint's own processor chat template (the very text the
transformers backend feeds its processor), images go in as vLLM multi-modal data, and
completions are decoded with the same tokenizer call, so both backends give the same
`Generation` for the same greedy request (token for token in fp32, tested).

- A folder holding `adapter_config.json` (a PEFT LoRA judge) is served as a LoRA adapter over its
  base model (`base_model_name_or_path`) with `enable_lora` + `LoRARequest`.
- Mllama (Llama-3.2-Vision) is refused: vLLM does not serve it; use the transformers backend.
- By default the engine runs in this process (`in_process=True`: no engine/worker processes are
  spawned, so it works under Celery's daemonic workers and without an `if __name__ == "__main__":`
  guard); `in_process=False` gives vLLM's default multi-process engine.
- On vLLM for CPU (`make vllm`), `VLLM_CPU_KVCACHE_SPACE` (GiB of KV cache) defaults to
  `kv_cache_gib` (1); the CUDA torchvision wheel must import in vLLM's processes (the `.pth` hook
  that scripts/install-vllm.sh installs does it).
"""

from __future__ import annotations

import gc
import json
import os
import weakref
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import AutoProcessor, GenerationConfig

from ..chat_format import chat_messages
from .backend import ChatRequest, Generation, SamplingParams, free_memory, stop_token_ids

MLLAMA_REFUSAL = (
    "vLLM does not serve Mllama (Llama-3.2-Vision) checkpoints ({path}); "
    "use the transformers backend (model.backend: transformers) for this model"
)
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts

# In-process engines share vLLM's process-global torch.distributed / model-parallel state, which
# EngineCore.shutdown() tears down, and so does the executor's own shutdown (the other engines then
# fail with "pipeline model parallel group is not initialized"): only the last live in-process engine
# may run it. The loop holds one engine at a time (ModelCache closes the old one before the swap).
_live_in_process = 0


def _release_in_process(engine_core: Any) -> None:
    global _live_in_process
    _live_in_process -= 1
    if _live_in_process == 0:
        engine_core.shutdown()
    else:  # another engine still uses the shared state: this one's memory goes with garbage collection
        gc.unfreeze()  # the engine's gc.freeze() at start


PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def resolve_checkpoint(model_path: str | Path) -> tuple[str, str | None, dict[str, Any]]:
    """(base model folder or id, adapter folder or None, adapter config) for a checkpoint folder."""
    path = Path(model_path)
    if is_adapter(path):
        cfg = json.loads((path / "adapter_config.json").read_text())
        if cfg.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"{path}: only LoRA adapters can be served by vLLM, not {cfg.get('peft_type')}")
        base = cfg.get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{path}/adapter_config.json names no base_model_name_or_path")
        return str(base), str(path.resolve()), cfg
    return str(model_path), None, {}


def model_type(path: str) -> str:
    cfg = Path(path) / "config.json"
    return json.loads(cfg.read_text()).get("model_type", "") if cfg.is_file() else ""


def refuse_unsupported(model_path: str | Path) -> None:
    """Raise ValueError for checkpoints vLLM does not serve (Mllama, or an adapter over one)."""
    base, _, _ = resolve_checkpoint(model_path)
    for folder in (str(model_path), base):
        if model_type(folder) == "mllama":
            raise ValueError(MLLAMA_REFUSAL.format(path=model_path))


def import_vllm() -> Any:
    try:
        import vllm
    except Exception as exc:  # ImportError, or a native library that does not load
        raise ImportError(
            f"the vllm backend needs vLLM, which does not import here ({type(exc).__name__}: {exc}); "
            "on CPU run `make vllm` (scripts/install-vllm.sh), on GPU `pip install vllm`"
        ) from exc
    return vllm


class VLLMBackend:
    """A GenerationBackend over `vllm.LLM`. Arguments TransformersBackend takes are accepted alike.

    `batch_size` is accepted for interface parity and unused (vLLM schedules batches itself);
    `device` only picks the default of `enforce_eager` (None: eager on CPU, CUDA graphs on CUDA).
    `max_images` is the most images one request may carry (vLLM's limit_mm_per_prompt).
    `engine_kwargs` go to `vllm.LLM` last (config `model.vllm`: gpu_memory_utilization,
    tensor_parallel_size, max_num_seqs, ...). `close()` shuts the engine down and frees its memory
    (tested: the process's memory and child processes return to what they were before).
    """

    def __init__(
        self,
        model_path: str,
        model_id: str = "",
        device: str = "cpu",
        dtype: str = "float32",
        batch_size: int = 8,
        trust_remote_code: bool = False,
        max_images: int = 1,
        max_model_len: int | None = None,  # None: the model's own
        seed: int = 0,
        in_process: bool = True,
        kv_cache_gib: float = 1,
        enforce_eager: bool | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        global _live_in_process
        del batch_size
        if enforce_eager is None:
            enforce_eager = not str(device).startswith("cuda")
        self._in_process = in_process
        self.model_id = model_id or str(model_path)
        refuse_unsupported(model_path)
        self.base, adapter, adapter_cfg = resolve_checkpoint(model_path)
        vllm = import_vllm()
        from vllm.lora.request import LoRARequest

        self.max_images = max_images
        proc_src = adapter if adapter and any((Path(adapter) / f).exists() for f in PROCESSOR_FILES) else self.base
        self.processor = AutoProcessor.from_pretrained(proc_src, trust_remote_code=trust_remote_code)
        self.tokenizer = self.processor.tokenizer
        try:
            gen_cfg = GenerationConfig.from_pretrained(self.base)
        except OSError:  # no generation_config.json: the tokenizer's eos only
            gen_cfg = GenerationConfig()
        # the same stop set as TransformersBackend: the checkpoint's eos ids plus the tokenizer's eos
        self.stop_ids = stop_token_ids(self.processor, SimpleNamespace(generation_config=gen_cfg))

        kw: dict[str, Any] = dict(
            model=self.base,  # its tokenizer too (an adapter folder has no config.json for vLLM to read)
            dtype=dtype,
            seed=seed,
            enforce_eager=enforce_eager,
            trust_remote_code=trust_remote_code,
            limit_mm_per_prompt={"image": max_images},
            max_model_len=max_model_len,
            # only SamplingParams count: not the checkpoint's generation_config.json sampling defaults
            generation_config="vllm",
        )
        self.lora = None
        if adapter:
            rank = int(adapter_cfg.get("r", 16))
            kw |= dict(enable_lora=True, max_loras=1, max_lora_rank=next((r for r in LORA_RANKS if r >= rank), rank))
            self.lora = LoRARequest("adapter", 1, adapter)
        if in_process:
            kw["distributed_executor_backend"] = "uni"
        kw |= engine_kwargs or {}

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gib:g}")
        saved_env = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        # vLLM's CPU worker pins torch's thread count (and stubs out torch.set_num_threads) in the
        # process it runs in: in-process, that would be the caller's process, so both are restored.
        saved_threads, saved_setter = torch.get_num_threads(), torch.set_num_threads
        if in_process:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        try:
            self.llm = vllm.LLM(**kw)
            if in_process:
                # vLLM's in-process client shuts its engine down when collected, tearing down the
                # shared state under any other in-process engine: that is ours to decide instead
                client = self.llm.llm_engine.engine_core
                client._finalizer.detach()
                _live_in_process += 1
                self._finalizer = weakref.finalize(self, _release_in_process, client.engine_core)
        finally:
            if in_process:
                torch.set_num_threads = saved_setter
                torch.set_num_threads(saved_threads)
                if saved_env is None:
                    os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
                else:
                    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = saved_env

    # --- prompts ---------------------------------------------------------------------------------

    def prompt(self, req: ChatRequest) -> dict[str, Any]:
        """The vLLM prompt for one request: chat-template text (+ its images)."""
        if len(req.images) > self.max_images:
            raise ValueError(
                f"request {req.key!r} has {len(req.images)} images; this engine takes at most "
                f"{self.max_images} (VLLMBackend(max_images=...))"
            )
        text = self.processor.apply_chat_template(
            chat_messages(req.text, req.images, req.system), add_generation_prompt=True, tokenize=False
        )
        out: dict[str, Any] = {"prompt": text}
        if req.images:
            out["multi_modal_data"] = {"image": list(req.images)}
        return out

    def _sampling(self, p: SamplingParams, seed: int) -> Any:
        from vllm import SamplingParams as VSamplingParams

        sample = p.temperature > 0
        return VSamplingParams(
            n=p.n if sample else 1,
            temperature=p.temperature if sample else 0.0,
            top_p=p.top_p if sample else 1.0,
            top_k=p.top_k if sample and p.top_k > 0 else 0,  # 0: off
            repetition_penalty=1.0,
            max_tokens=p.max_new_tokens,
            seed=seed if sample else None,
            stop_token_ids=list(self.stop_ids),
            detokenize=False,  # decoded below with the HF tokenizer, as TransformersBackend does
        )

    # --- generation ------------------------------------------------------------------------------

    def generate(
        self,
        requests: list[ChatRequest],
        params: SamplingParams,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Generation]:
        if not requests:
            return []
        copies = params.n if params.temperature > 0 else 1
        prompts = [self.prompt(r) for r in requests]
        # one seed per request (params.seed + its index): reproducible, and identical prompts
        # in one call still get different samples
        sampling = [self._sampling(params, params.seed + i) for i in range(len(requests))]
        outputs = self._run(prompts, sampling, progress)

        results = []
        for req, out in zip(requests, outputs):
            rows = [list(c.token_ids) for c in sorted(out.outputs, key=lambda c: c.index)]
            counts = [self._count(row) for row in rows]
            texts = self.tokenizer.batch_decode([row[:c] for row, c in zip(rows, counts)], skip_special_tokens=True)
            if copies < params.n:  # greedy: every sample is the same completion
                texts, counts = texts * params.n, counts * params.n
            results.append(
                Generation(key=req.key, texts=texts, token_counts=counts, prompt_tokens=len(out.prompt_token_ids))
            )
        return results

    def _run(
        self, prompts: list[dict[str, Any]], sampling: list[Any], progress: Callable[[int, int], None] | None
    ) -> list[Any]:
        """LLM.generate, stepping the engine here so progress(done, total) follows finished requests."""
        ids = self.llm.enqueue(prompts, sampling, lora_request=self.lora, use_tqdm=False)
        engine, finished = self.llm.llm_engine, {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    finished[out.request_id] = out
                    if progress is not None:
                        progress(len(finished), len(prompts))
        if len(finished) != len(ids):
            raise RuntimeError(f"vLLM finished {len(finished)} of {len(ids)} requests")
        # request ids count up from the engine's counter, in submission order (as LLM.generate sorts)
        return sorted(finished.values(), key=lambda out: int(out.request_id))

    def _count(self, row: list[int]) -> int:
        """Generated tokens up to and including the first stop token."""
        for i, tok in enumerate(row):
            if tok in self.stop_ids:
                return i + 1
        return len(row)

    def close(self) -> None:
        """Shut the engine down and free its memory (in-process: the shared distributed state only
        when no other in-process engine is live). Also runs when the backend is garbage-collected."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        if self._in_process:
            self._finalizer()
        else:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the engine may be half gone already
                pass
        del llm
        free_memory()
