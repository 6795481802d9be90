"""Supervised fine-tuning of a VLM checkpoint, with the loss on the assistant answer tokens only.

`loop.sft(model_path, examples, out_dir, cfg)` trains and writes a Hugging Face folder (or, for LoRA
with `lora_merge=False`, a PEFT adapter folder) plus `selfjudge_training.json`. What it does:

- full fine-tuning or LoRA on the language model only (`method`, `lora_*`; vision towers reuse
  the text layers' names, so the target is a regex anchored on `language_model|text_model`);
- answer-only loss: labels are -100 except the answer and the token that closes the assistant
  turn, and the LM head runs only at those positions;
- the data is read one example at a time (`data`): a length pass over each rank's slice, then
  a DataLoader whose workers fetch and encode this rank's micro-batches ahead of the step, so
  memory does not grow with the data; an example over max_length gets smaller images
  (`max_pixels`/`min_pixels`) or is dropped and counted (`TrainResult.dropped`), never cut;
- random optimizer steps of batch_size * grad_accum * world examples, each cut into length-sorted
  micro-batches under a token budget; on Qwen2/2.5-VL the examples of a micro-batch are packed
  into one row without padding (per-example position ids, `packing`; on CUDA attention runs
  through torch's FlashAttention varlen kernel, `varlen`), elsewhere padded; the loss
  is a token-weighted mean over the whole step (the gradient does not depend on the cut);
  gradient clipping at 1.0, warmup + cosine/linear/constant schedule, fused AdamW;
- bf16 autocast over fp32 master weights on CUDA (`precision="auto"`);
- data parallel over several processes (`distributed="ddp"|"fsdp"`, launched by torchrun, see
  `launch`): the global batch is `batch_size * grad_accum * world_size`, every rank cuts
  the same micro-batch plan and takes every world_size-th micro-batch of each optimizer step, so
  N processes take the same steps as one process with N times the accumulation;
- resumable: every `save_every` optimizer steps the trainable weights, optimizer, scheduler, RNG
  states, step and losses go into `<resume_from>/step-NNNNNN/`; a later call with the same
  `resume_from`, data and config continues from the newest complete one.

Qwen2-VL/2.5-VL, Mllama (Llama-3.2-Vision) and Idefics3 checkpoints are handled: their image
tensors differ (`data.collate`).

The modules, one concern each: `data` (examples read one at a time, encoded, batched, packed),
`model` (the trainable model: loading, LoRA, the frozen vision encoder, the answer-only loss,
export), `runtime` (processes, devices, precision, the DDP/FSDP wrap), `checkpoint` (resumable
saves and the run's fingerprint), `loop` (the step plan and `sft`, the training loop), `launch`
(`train`: `sft` here, or on several processes through torchrun); `varlen` is the packed rows'
attention kernel.
"""
