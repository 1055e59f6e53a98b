"""MLM training throughput of transformers' BertForMaskedLM (PyTorch) at our model's shapes. Not a test.

    python benchmarks/torch_mlm_throughput.py --config configs/base.py --batch_size 64 --dtype bfloat16 --compile
    python benchmarks/torch_mlm_throughput.py --config configs/tiny.py --steps 5 --warmup 2     # a CPU smoke run

The reference side of the comparison in docs/benchmarks.md: what a Hugging
Face training recipe does with the same model. The model is BertForMaskedLM
built from the config our export writes (export.hf_config_dict: same
sizes, exact GELU, tied decoder, no attention-probability dropout), with
SDPA attention, trained by torch.optim.AdamW (fused on CUDA) at the config's
learning rate and weight decay, optionally under torch.compile and bf16
autocast. Batches are synthetic, of the configured shape: --batch_size x
seq_length tokens with max_predictions masked positions per sequence.

--head picks how the MLM loss is computed:
  full    the stock recipe: logits at every position, labels -100 where not
          masked (DataCollatorForLanguageModeling's layout);
  masked  what our trainer does: the MLM head only at the masked positions
          (hidden states gathered first), so the 87,365-way projection runs
          on max_predictions tokens a sequence instead of all of them.
Model FLOPs use model.flops_per_token (the masked-head count, the same for
both heads, so --head full's extra work shows as a lower MFU). --warmup
steps (compilation, autotuning) are left out of the timing. Prints one JSON
line: step time, tokens/s, model TFLOP/s and MFU where the device's peak is
known (metrics.PEAK_FLOPS), the TF32 setting and the library versions.

The synthetic batches are full (no padding), so no attention mask is passed
and SDPA may pick its flash kernel; our trainer builds no mask for them either.

--head masked,full measures both heads in one process (one torch import and CUDA start-up), one JSON
line each as soon as it is measured. A batch that runs out of GPU memory is halved and measured again,
and the line says so (requested_batch_size, halved). The full head's float32 logits alone are
batch x seq x vocabulary x 10 bytes or more (bf16 logits, their float32 copy for the loss and its
gradient); where that figure exceeds 80% of the free GPU memory the batch is halved before the first
try, and the line says that too (an estimate that picks the batch, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

from common import MATMUL_PRECISIONS, REPO, load_config, set_torch_matmul_precision, versions

HEADS = ("full", "masked")
# Bytes per element of the stock head's (batch, seq, vocabulary) arrays: bf16 logits, their float32 copy in
# the loss, the float32 gradient of that copy (torch's cross-entropy keeps its log-softmax too).
FULL_HEAD_BYTES_PER_LOGIT = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "base.py"))
    parser.add_argument("--batch_size", type=int, default=0, help="sequences per step (default: the config's)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: autocast the forward pass (weights and optimizer stay float32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--head", default="full", help="full, masked, or both comma-separated (measured in order)")
    parser.add_argument("--device", default="", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--matmul_precision", choices=MATMUL_PRECISIONS, default="tf32",
                        help="float32 matmuls: TF32 allowed or full float32 (set the same on both sides)")
    args = parser.parse_args()
    heads = args.head.split(",")
    if not set(heads) <= set(HEADS):
        parser.error(f"--head takes {' and/or '.join(HEADS)}, comma-separated; got {args.head!r}")

    import torch

    from dnavec_jax.training import settings

    config = load_config(args.config)
    model_config = settings.model_config_from(config)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    set_torch_matmul_precision(args.matmul_precision)
    requested = args.batch_size or config.train.global_batch_size
    for head in heads:
        batch, halved = requested, []
        if head == "full" and device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
            seq = config.data.prep.seq_length
            def need(b, seq=seq):
                return b * seq * model_config.vocab_size * FULL_HEAD_BYTES_PER_LOGIT

            while batch > 1 and need(batch) > 0.8 * free:
                halved.append(f"{batch}: its logits need about {need(batch) / 2**30:.0f} GiB (estimate) of "
                              f"{free / 2**30:.0f} GiB free")
                batch //= 2
        while True:
            try:
                result = measure(args, config, model_config, device, head, batch)
                break
            except torch.OutOfMemoryError:
                halved.append(f"{batch}: out of memory")
                torch.cuda.empty_cache()
                if batch == 1:
                    result = {"head": head, "failed": "out of memory at batch 1"}
                    break
                batch //= 2
                import torch._dynamo  # a new batch shape: compile afresh rather than as a dynamic-shape graph

                torch._dynamo.reset()
        if halved:
            result.update(requested_batch_size=requested, halved=halved)
        print(json.dumps(result), flush=True)


def measure(args, config, model_config, device, head: str, batch: int) -> dict:
    """One head at one batch size: warm-up, then the timed steps."""
    import torch
    import transformers

    from dnavec_jax import export
    from dnavec_jax.model import flops_per_token
    from dnavec_jax.training import metrics

    prep = config.data.prep
    seq, predictions = prep.seq_length, prep.max_predictions
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    hf_config = transformers.BertConfig(**{k: v for k, v in export.hf_config_dict(model_config).items()
                                           if k not in ("architectures", "model_type", "dtype")})
    hf_config._attn_implementation = "sdpa"
    model = transformers.BertForMaskedLM(hf_config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(config.train.learning_rate),
                                  weight_decay=float(config.train.weight_decay), eps=1e-6,
                                  fused=device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def loss_full(input_ids, attention_mask, positions, labels):
        full_labels = torch.full_like(input_ids, -100).scatter_(1, positions, labels)
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=full_labels).loss

    def loss_masked(input_ids, attention_mask, positions, labels):
        hidden = model.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        picked = torch.gather(hidden, 1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = model.cls(picked)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

    loss_fn = loss_full if head == "full" else loss_masked
    if args.compile:
        loss_fn = torch.compile(loss_fn)

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, model_config.vocab_size, (batch, seq), generator=generator).to(device)
    attention_mask = None  # full synthetic batches: no padding, so no mask (SDPA can pick flash attention)
    positions = torch.stack([torch.randperm(seq - 2, generator=generator)[:predictions] + 1
                             for _ in range(batch)]).to(device)
    labels = torch.gather(input_ids, 1, positions)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(input_ids, attention_mask, positions, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(config.train.grad_clip_norm))
        optimizer.step()
        return loss

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    try:
        for _ in range(args.warmup):
            step()
        sync()
        started = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        sync()
    except torch.OutOfMemoryError:
        del model, optimizer  # freed before the caller tries a smaller batch
        raise
    step_time = (time.perf_counter() - started) / args.steps
    tokens_per_s = batch * seq / step_time
    tflops = tokens_per_s * flops_per_token(model_config, seq, predictions) / 1e12
    kind = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak = metrics.peak_flops_for_kind(kind) if device.type == "cuda" else None
    return {
        "side": "transformers BertForMaskedLM (torch)", "device": kind, "dtype": args.dtype, "compile": args.compile,
        "head": head, "batch_size": batch, "seq_length": seq, "max_predictions": predictions,
        "step_time_s": step_time, "tokens_per_s": tokens_per_s, "model_tflops": tflops,
        "mfu": tflops * 1e12 / peak if peak else None, "final_loss": float(loss),
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "matmul_precision": args.matmul_precision, "versions": versions("torch", "transformers"),
    }


if __name__ == "__main__":
    main()
