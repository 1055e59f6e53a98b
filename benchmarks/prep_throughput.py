"""End-to-end data-prep throughput (bases/s) and peak memory on a synthetic genome. Not a test.

    python benchmarks/prep_throughput.py                      # 120 Mbp, all cores
    python benchmarks/prep_throughput.py --mbp 200 --num_workers 1 --mask_strategy span
    python benchmarks/prep_throughput.py --mbp 100 --beam_pipeline_options runner=FnApiRunner  # pool, then Beam

The synthetic genome imitates hg38's layout: gzipped FASTA, 60-column lines,
several records with 10 kb N telomeres, a multi-Mbp N "centromere", scattered
50-100 kb N gaps, about half the bases soft-masked (lower case) in repeat-sized
runs, and rare IUPAC letters. End to end = prepare_dataset() wall time:
decompression, indexing, checksums, tokenizing, masking, serialising, writing
shards and metadata. Peak memory = the highest sum of resident set sizes of
this process and all its children, sampled every 50 ms (psutil), plus each
one's own peak from the kernel (getrusage) for comparison. With
--beam_pipeline_options the same genome is then prepared on that Beam runner
(default FnApiRunner, direct_num_workers = --num_workers), one run after the
other, and the ratio of the two rates is printed.
"""

from __future__ import annotations

import argparse
import gzip
import platform
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnavec_jax.data import PrepSettings, prepare_dataset
from dnavec_jax.data.prepared import read_complete


def synthetic_record(rng: np.random.Generator, length: int) -> bytes:
    bases = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, length, dtype=np.uint8)].copy()
    # Soft-masked repeats: runs of 100..6000 bases in lower case, covering about half the record.
    position = 0
    while position < length:
        position += int(rng.integers(100, 6000))
        run = int(rng.integers(100, 6000))
        bases[position : position + run] += 32  # upper -> lower case
        position += run
    # N gaps: telomeres, one centromere, scattered gaps; rare IUPAC letters.
    gaps = [(0, 10_000), (length - 10_000, length)]
    centre = int(rng.integers(length // 3, 2 * length // 3))
    gaps.append((centre, centre + int(rng.integers(1_000_000, 3_000_000))))
    for _ in range(max(1, length // 5_000_000)):
        start = int(rng.integers(0, length))
        gaps.append((start, start + int(rng.integers(50_000, 100_000))))
    for start, end in gaps:
        bases[start:end] = ord("N")
    iupac = rng.integers(0, length, max(1, length // 1_000_000))
    bases[iupac] = np.frombuffer(b"RYKMSW", np.uint8)[rng.integers(0, 6, len(iupac))]
    return bases.tobytes()


def write_genome(path: Path, total_bases: int, seed: int = 0, one_record: bool = False) -> int:
    rng = np.random.default_rng(seed)
    lengths = []
    remaining = total_bases
    while remaining > 0:
        length = remaining if one_record else min(remaining, int(rng.integers(20_000_000, 50_000_000)))
        lengths.append(length)
        remaining -= length
    with gzip.open(path, "wb", compresslevel=1) as handle:
        for index, length in enumerate(lengths):
            handle.write(f">chr{index + 1}\n".encode())
            sequence = synthetic_record(rng, length)
            for start in range(0, length, 60 * 100_000):
                block = sequence[start : start + 60 * 100_000]
                handle.write(b"\n".join(block[i : i + 60] for i in range(0, len(block), 60)) + b"\n")
    return sum(lengths)


class PeakMemory:
    """Samples the RSS of this process plus all descendants; keeps the highest sum."""

    def __init__(self, interval: float = 0.05):
        self.peak = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me] + me.children(recursive=True):
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def measure(settings: PrepSettings, data_dir: Path, bases: int, num_workers, beam_options) -> float:
    """Prepares the dataset once, prints time, rates and memory; returns bases/s."""
    with PeakMemory() as memory:
        started = time.perf_counter()
        path = prepare_dataset(settings, data_dir, num_workers=num_workers, progress=False, beam_options=beam_options)
        seconds = time.perf_counter() - started
    meta = read_complete(path).metadata
    self_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    examples = sum(meta["num_examples"].values())
    tokens = sum(meta["num_tokens"].values())
    versions = meta["versions"]
    if beam_options:
        import apache_beam

        versions = {**versions, "apache_beam": apache_beam.__version__}
    print(f"versions: {versions}")
    print(f"runner: {meta['runner']}{f' ({beam_options})' if beam_options else ''}, workers: {meta['num_workers']}, "
          f"mask_strategy: {settings.mask_strategy}, dupe_factor: {settings.dupe_factor}")
    print(f"end to end: {seconds:.1f} s for {bases:,} bases -> {bases / seconds / 1e6:.2f} M bases/s "
          f"({examples / seconds:,.0f} examples/s, {tokens / seconds / 1e6:.2f} M tokens/s)")
    print(f"peak RSS (this process + children, summed): {memory.peak / 2**20:,.0f} MiB; "
          f"getrusage peaks: self {self_peak:,.0f} MiB, largest child {child_peak:,.0f} MiB")
    print(f"examples: {meta['num_examples']}, leak figure: {meta['leak_figure']:.3f}")
    return bases / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mbp", type=int, default=120, help="synthetic genome size in Mbp (>= 100 for the record)")
    parser.add_argument("--num_workers", type=int, default=None, help="default: all cores")
    parser.add_argument("--mask_strategy", default="token", choices=("token", "span"))
    parser.add_argument("--dupe_factor", type=int, default=1)
    parser.add_argument("--one_record", action="store_true",
                        help="the whole genome as one record (to see that memory does not grow with record length)")
    parser.add_argument("--workdir", default=None, help="default: a temporary directory (deleted)")
    parser.add_argument("--beam_pipeline_options", default=None,
                        help="then prepare the same genome on Beam with these options (e.g. runner=FnApiRunner)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        fasta = Path(tmp) / "synthetic.fa.gz"
        started = time.perf_counter()
        total = write_genome(fasta, args.mbp * 1_000_000, one_record=args.one_record)
        print(f"synthetic genome: {total:,} bases{' in one record' if args.one_record else ''}, "
              f"{fasta.stat().st_size / 1e6:.0f} MB gzipped, "
              f"written in {time.perf_counter() - started:.0f} s")
        settings = PrepSettings(fasta=(str(fasta),), chromosomes="all", mask_strategy=args.mask_strategy,
                                dupe_factor=args.dupe_factor)
        print(f"machine: {platform.platform()}, {psutil.cpu_count()} CPUs ({platform.processor() or 'unknown'}), "
              f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM")
        rates = [measure(settings, Path(tmp) / "pool", total * args.dupe_factor, args.num_workers, None)]
        if args.beam_pipeline_options:
            rates.append(measure(settings, Path(tmp) / "beam", total * args.dupe_factor, args.num_workers,
                                 args.beam_pipeline_options))
            print(f"Beam / process pool: {rates[1] / rates[0]:.2f}x the bases/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
