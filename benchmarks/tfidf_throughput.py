"""`dnavec tfidf` throughput (genome bases/s, both passes) and peak memory on a synthetic genome. Not a test.

    python benchmarks/tfidf_throughput.py              # 100 Mbp
    python benchmarks/tfidf_throughput.py --mbp 20     # quicker

The genome is prep_throughput.py's synthetic hg38 look-alike (gzipped, several
records, N gaps, soft-masked runs, rare IUPAC letters). Timed: tfidf.genome_tfidf
(decompression, indexing, two tokenizing passes, the tf-idf arithmetic), then
the outputs (CSV, .npy, word cloud) separately. Peak memory: this process's
RSS sampled every 50 ms (psutil).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prep_throughput import PeakMemory, write_genome

from dnavec_jax import tfidf
from dnavec_jax.data.settings import PrepSettings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mbp", type=int, default=100, help="synthetic genome size in Mbp")
    parser.add_argument("--k_min", type=int, default=3)
    parser.add_argument("--k_max", type=int, default=8)
    parser.add_argument("--seq_length", type=int, default=512)
    parser.add_argument("--workdir", default=None, help="default: a temporary directory (deleted)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        fasta = Path(tmp) / "synthetic.fa.gz"
        started = time.perf_counter()
        total = write_genome(fasta, args.mbp * 1_000_000)
        print(f"synthetic genome: {total:,} bases, {fasta.stat().st_size / 1e6:.0f} MB gzipped, "
              f"written in {time.perf_counter() - started:.0f} s")
        settings = PrepSettings(fasta=(str(fasta),), chromosomes="all", k_min=args.k_min, k_max=args.k_max,
                                seq_length=args.seq_length)
        with PeakMemory() as memory:
            result = tfidf.genome_tfidf(settings.fasta, settings)
            started = time.perf_counter()
            rows = tfidf.write_outputs(result, Path(tmp), 100, 0, {})
            output_seconds = time.perf_counter() - started
        print(f"machine: {platform.platform()}, {psutil.cpu_count()} CPUs ({platform.processor() or 'unknown'}), "
              f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM; numpy {np.__version__}; one process")
        print(f"k {args.k_min}..{args.k_max}, seq_length {args.seq_length}: {result.num_documents:,} documents, "
              f"{result.num_tokens:,} tokens, {int((result.df > 0).sum()):,} distinct k-mers")
        print(f"tf-idf (two passes): {result.seconds:.1f} s for {result.bases:,} bases "
              f"-> {result.bases_per_second / 1e6:.2f} M bases/s "
              f"({2 * result.num_tokens / result.seconds / 1e6:.2f} M tokens/s over both passes)")
        print(f"outputs (CSV, .npy, word cloud of {len(rows)}): {output_seconds:.1f} s")
        print(f"peak RSS: {memory.peak / 2**20:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
