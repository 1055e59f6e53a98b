"""`embed` throughput: ours (Flax, jit) against the exported model in transformers, same device. Not a test.

    python benchmarks/embed_throughput.py                         # base config, random weights, 1 kb sequences
    python benchmarks/embed_throughput.py --model runs/demo --num_sequences 512 --length 2000

Without --model, a randomly initialised model of --config (configs/base.py) is
exported to a temporary directory, so both sides run the same weights. Both
sides embed the same random DNA sequences (seeded), tokenized by the project
tokenizer into the same windows of at most max_tokens k-mers (embed's default:
every k-mer of the middle k): ours through embed.embed_sequences (jit over all
devices, bucketed padded lengths, [CLS] and mean pooling on the device);
transformers' BertModel (torch, SDPA attention, eval mode, no_grad) on the very
same windows in batches of the same size, mean-pooled. Both in --dtype (bf16:
ours computes in bf16 with float32 parameters, theirs runs a bf16 copy of the
model). Transformers pads each batch to its longest window (as a torch user
would); ours pads a window to a power of two (one compiled program per
length), so a second transformers measurement pads to ours' lengths. One
warm-up pass each (compilation) is left out of the timing; then --repeats
timed passes per side, alternating (ours, theirs, theirs padded as ours, ours,
...), and the best of each counts. Prints sequences/s and tokens/s for both, the ratio, every
pass's seconds, the threads each side may use, XLA_FLAGS and the load average
as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from common import (
    MATMUL_PRECISIONS,
    REPO,
    random_model_export,
    set_jax_matmul_precision,
    set_torch_matmul_precision,
    versions,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="run dir or export (default: random weights of --config)")
    parser.add_argument("--config", default=str(REPO / "configs" / "base.py"))
    parser.add_argument("--num_sequences", type=int, default=64)
    parser.add_argument("--length", type=int, default=1000, help="bases per sequence")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--matmul_precision", choices=MATMUL_PRECISIONS, default="tf32",
                        help="float32 matmuls on both sides: TF32 allowed or full float32")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype, both sides")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per side, alternating; the best counts")
    args = parser.parse_args()

    import jax
    import numpy as np
    import torch
    from transformers import BertModel

    from dnavec_jax import export
    from dnavec_jax.tokenization import CLS_ID, PAD_ID, SEP_ID
    from dnavec_jax.tools import embed, loaded_model

    set_jax_matmul_precision(args.matmul_precision)
    set_torch_matmul_precision(args.matmul_precision)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the same device as JAX's

    rng = np.random.default_rng(0)
    sequences = ["".join(rng.choice(list("ACGT"), args.length)) for _ in range(args.num_sequences)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or str(random_model_export(args.config, Path(tmp)))
        loaded = loaded_model.load_model(model_dir)

        k = embed.default_k(loaded.tokenizer)  # both sides: embed's default tokenization

        def ours():
            return embed.embed_sequences(loaded, sequences, seed=0, batch_size=args.batch_size, k=k,
                                         dtype=args.dtype)

        result = ours()  # compile
        tokens = int(result["num_tokens"].sum())

        export_dir = model_dir
        if not (Path(model_dir) / "model.safetensors").exists():
            export_dir = str(export.export_checkpoint(model_dir, Path(tmp) / "hf")[0])
        torch_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
        torch_model = BertModel.from_pretrained(export_dir, dtype=torch_dtype, attn_implementation="sdpa")
        torch_model = torch_model.to(device).eval()
        windows = [window.ids for index, seq in enumerate(sequences)
                   for window in loaded_model.sequence_windows(
                       loaded.tokenizer, seq, None, loaded.max_tokens, f"sequence {index}", k=k)]

        def theirs(pad_as_ours: bool = False):
            pooled = []
            with torch.no_grad():
                for start in range(0, len(windows), args.batch_size):
                    chunk = windows[start:start + args.batch_size]
                    width = max(len(w) for w in chunk) + 2
                    if pad_as_ours:  # the padded length ours runs these windows at (a power of two)
                        width = loaded_model.padded_length(width - 2, loaded.window_length)
                    ids = np.full((len(chunk), width), PAD_ID, np.int64)
                    for row, window in enumerate(chunk):
                        ids[row, :len(window) + 2] = [CLS_ID, *window, SEP_ID]
                    mask = torch.from_numpy((ids != PAD_ID).astype(np.int64)).to(device)
                    hidden = torch_model(input_ids=torch.from_numpy(ids).to(device),
                                         attention_mask=mask).last_hidden_state
                    pooled.append((hidden.float() * mask[..., None]).sum(1) / mask.sum(1, keepdim=True))
            return torch.cat(pooled).cpu()  # on the host, as ours: the timing includes the copy back

        theirs()  # warm-up
        theirs(True)
        times = {"ours": [], "theirs": [], "theirs_padded_as_ours": []}
        sides = (("ours", ours), ("theirs", theirs), ("theirs_padded_as_ours", lambda: theirs(True)))
        for _ in range(args.repeats):  # alternating, so that both sides see the same load on a shared machine
            for side, function in sides:
                started = time.perf_counter()
                function()
                times[side].append(time.perf_counter() - started)
        ours_seconds, theirs_seconds = min(times["ours"]), min(times["theirs"])

    print(json.dumps({
        "machine": f"{platform.platform()}, {jax.device_count()} x {jax.devices()[0].device_kind}, "
                   f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "torch_device": str(device), "matmul_precision": args.matmul_precision, "dtype": args.dtype,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "load_average": os.getloadavg(),
        "model": args.model or f"random weights of {Path(args.config).name}",
        "hidden": loaded.config.hidden_size, "layers": loaded.config.num_layers,
        "sequences": args.num_sequences, "bases_per_sequence": args.length, "tokens": tokens,
        "windows": len(windows), "batch_size": args.batch_size,
        "ours_sequences_per_s": round(args.num_sequences / ours_seconds, 2),
        "ours_tokens_per_s": round(tokens / ours_seconds),
        "transformers_sequences_per_s": round(args.num_sequences / theirs_seconds, 2),
        "ratio_ours_over_transformers": round(theirs_seconds / ours_seconds, 2),
        "ratio_ours_over_transformers_padded_as_ours": round(min(times["theirs_padded_as_ours"]) / ours_seconds, 2),
        "seconds": {side: [round(value, 2) for value in values] for side, values in times.items()},
        "versions": versions("jax", "jaxlib", "flax", "torch", "transformers"),
    }))


if __name__ == "__main__":
    main()
