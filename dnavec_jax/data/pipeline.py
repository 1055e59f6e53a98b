"""Genome records -> tokenized, masked examples -> TFRecord shards, spread over worker processes.

A record is cut into chunks (whole example lengths; the streaming and RNG unit, seeded by
[seed, dupe, record, chunk]); chunks are packed into shard jobs of at most shard_bases; shards are
numbered in (dupe, job) order, so 1 or N workers write byte-identical shards. Validation is a fixed
choice of validation_block_size blocks, cut so that no token crosses a train/validation boundary.
Jobs run in worker processes here (ProcessPool) or as Beam elements (beam_prep.BeamExecutor).
docs/data.md ("Determinism and parallelism", "Train / validation split").
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import math
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dnavec_jax.data import storage
from dnavec_jax.data.fasta import GenomeRecord, RecordReader, SourceFile, base_code_table, contig_runs, open_source
from dnavec_jax.data.masking import MaskedBatch, Masker, leak_per_example
from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.tokenization import CLS_ID, PAD_ID, SEP_ID

SPLITS = ("train", "validation")
STAT_KEYS = ("examples", "tokens", "predictions", "leaked", "contigs", "skipped_contigs", "contig_bases")


def empty_stats() -> dict[str, dict[str, int]]:
    return {split: dict.fromkeys(STAT_KEYS, 0) for split in SPLITS}


def add_stats(total: dict[str, dict[str, int]], part: dict[str, dict[str, int]]) -> None:
    for split in SPLITS:
        for key in STAT_KEYS:
            total[split][key] += int(part[split][key])


def genome_stats(results: Sequence[dict], num_sources: int) -> list[dict[str, dict[str, int]]]:
    """Per source file (genome), the sum of the jobs' stats (a job's are keyed by str(file index))."""
    totals = [empty_stats() for _ in range(num_sources)]
    for result in results:
        for file_index, stats in result["stats"].items():
            add_stats(totals[int(file_index)], stats)
    return totals


# ---- the split --------------------------------------------------------------
def _held_out_count(num_blocks: int, fraction: float) -> int:
    """Blocks held out of num_blocks: about fraction of them, at least one where there are two or more."""
    if num_blocks < 2 or fraction <= 0:
        return 0
    return max(1, math.floor(fraction * num_blocks + 0.5))


def _block_key(name: str, block: int) -> bytes:
    return hashlib.sha256(f"{name}\t{block}".encode()).digest()[:8]


def validation_blocks(name: str, length: int, fraction: float, block_size: int) -> np.ndarray:
    """Boolean per block of a record: True for held-out (validation) blocks.

    The choice hashes (record name, block index) with SHA-256 and takes the
    lowest `count` hashes: fixed across seeds, dupes and runs, spread at random
    over the record.
    """
    num_blocks = max(1, math.ceil(length / block_size))
    held_out = np.zeros(num_blocks, dtype=bool)
    count = _held_out_count(num_blocks, fraction)
    if count:
        keys = [_block_key(name, block) for block in range(num_blocks)]
        held_out[sorted(range(num_blocks), key=keys.__getitem__)[:count]] = True
    return held_out


def hold_out_in_every_genome(records: Sequence[GenomeRecord], settings: PrepSettings) -> list[GenomeRecord]:
    """The records, where a genome (a source file) would otherwise have no validation block given some.

    The per-record choice holds nothing out of a record shorter than two blocks, so a genome of many
    short scaffolds would have no validation split. Such a genome (two blocks or more in all) holds
    out its lowest-hash blocks by the same rule over all its blocks; genomes the per-record choice
    already serves are left exactly as they were.
    """
    size, fraction = settings.validation_block_size, settings.validation_fraction
    by_genome: dict[int, list[GenomeRecord]] = {}
    for record in records:
        by_genome.setdefault(record.file_index, []).append(record)
    chosen: dict[int, list[int]] = {}
    for genome in by_genome.values():
        if any(_held_out_count(math.ceil(r.length / size), fraction) for r in genome):
            continue
        blocks = [(record, block) for record in genome for block in range(max(1, math.ceil(record.length / size)))]
        count = _held_out_count(len(blocks), fraction)
        for record, block in sorted(blocks, key=lambda rb: (_block_key(rb[0].name, rb[1]), rb[0].index))[:count]:
            chosen.setdefault(record.index, []).append(block)
    return [dataclasses.replace(r, held_out_blocks=tuple(sorted(chosen[r.index]))) if r.index in chosen else r
            for r in records]


@dataclasses.dataclass(frozen=True)
class RecordSplit:
    held_out: np.ndarray  # bool per block
    cuts: np.ndarray  # positions where a train block meets a validation block
    block_size: int

    def is_validation(self, positions: np.ndarray) -> np.ndarray:
        return self.held_out[np.asarray(positions) // self.block_size]


def record_split(record: GenomeRecord, settings: PrepSettings) -> RecordSplit:
    held_out = validation_blocks(record.name, record.length, settings.validation_fraction,
                                 settings.validation_block_size)
    held_out[list(record.held_out_blocks)] = True
    change = np.flatnonzero(held_out[1:] != held_out[:-1]) + 1
    return RecordSplit(held_out, change.astype(np.int64) * settings.validation_block_size,
                       settings.validation_block_size)


# ---- planning ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Job:
    dupe: int
    task: int
    units: tuple[tuple[int, int], ...]  # (record index, chunk index)
    bases: int


def plan_tasks(settings: PrepSettings, records: Sequence[GenomeRecord]) -> list[tuple[tuple[int, int], ...]]:
    """Consecutive chunks packed into tasks of at most shard_bases bases (one shard each)."""
    chunk = settings.chunk_length
    tasks: list[tuple[tuple[int, int], ...]] = []
    current: list[tuple[int, int]] = []
    filled = 0
    for record in records:
        for chunk_index in range(math.ceil(record.length / chunk)):
            size = min(chunk, record.length - chunk_index * chunk)
            if current and filled + size > settings.shard_bases:
                tasks.append(tuple(current))
                current, filled = [], 0
            current.append((record.index, chunk_index))
            filled += size
    if current:
        tasks.append(tuple(current))
    return tasks


def plan_jobs(settings: PrepSettings, records: Sequence[GenomeRecord]) -> list[Job]:
    chunk = settings.chunk_length
    lengths = {record.index: record.length for record in records}
    jobs = []
    for dupe in range(settings.dupe_factor):
        for task_index, units in enumerate(plan_tasks(settings, records)):
            bases = sum(min(chunk, lengths[r] - c * chunk) for r, c in units)
            jobs.append(Job(dupe, task_index, units, bases))
    return jobs


# ---- one chunk ----------------------------------------------------------------
@dataclasses.dataclass
class ChunkExamples:
    """The masked examples of one chunk; `order` is the seeded order they are written in."""

    true_ids: np.ndarray  # (n, seq_length) before masking
    num_tokens: np.ndarray  # (n,) k-mer tokens per example
    masked: MaskedBatch
    start_offset: np.ndarray  # (n,) position in the record of the first token
    is_validation: np.ndarray  # (n,) bool
    order: np.ndarray  # (n,) permutation
    stats: dict[str, dict[str, int]]

    @property
    def num_real(self) -> np.ndarray:
        """(n,) positions holding [CLS], k-mers or [SEP]: the ones of input_mask."""
        return self.num_tokens + 2

    def features(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """BERT's features (data.features.BERT_FEATURES) of the given rows, as the shards hold them."""
        seq_length = self.true_ids.shape[1]
        return {
            "input_ids": self.masked.input_ids[rows],
            "input_mask": (np.arange(seq_length)[None, :] < self.num_real[rows, None]).astype(np.int64),
            "segment_ids": np.zeros((len(rows), seq_length), np.int64),
            "masked_lm_positions": self.masked.masked_lm_positions[rows],
            "masked_lm_ids": self.masked.masked_lm_ids[rows],
            "masked_lm_weights": self.masked.masked_lm_weights[rows],
        }


@dataclasses.dataclass
class ChunkTokens:
    """A chunk's k-mer tokens before they are laid out as examples (GenomeWorker.chunk_tokens)."""
    piece_ids: list[np.ndarray]  # token ids of each piece (the part of a contig in the chunk)
    piece_positions: list[np.ndarray]  # record position of each token's first base
    split: RecordSplit
    rng: np.random.Generator  # the chunk's generator, after drawing k: masking continues from it
    stats: dict[str, dict[str, int]]


class ExampleLayout(NamedTuple):
    """Where each token of a chunk goes: example example_of[t], k-mer column column[t] (0 = first k-mer)."""
    flat_ids: np.ndarray  # (tokens,) the pieces' ids, concatenated
    example_of: np.ndarray  # (tokens,)
    column: np.ndarray  # (tokens,)
    num_tokens: np.ndarray  # (examples,) k-mer tokens per example
    start_offset: np.ndarray  # (examples,) record position of each example's first token


def layout_examples(piece_ids: Sequence[np.ndarray], piece_positions: Sequence[np.ndarray],
                    tokens_per_example: int) -> ExampleLayout:
    """Cuts pieces into examples: a new example at each piece start and at each record position that is a
    multiple of tokens_per_example (so where a chunk ends never decides where an example does)."""
    flat_ids = np.concatenate(piece_ids)
    positions = np.concatenate(piece_positions)
    new_example = positions % tokens_per_example == 0
    new_example[np.cumsum([0] + [len(piece) for piece in piece_ids[:-1]])] = True
    first_token = np.flatnonzero(new_example)
    example_of = np.cumsum(new_example) - 1
    column = np.arange(len(flat_ids)) - first_token[example_of]
    num_tokens = np.diff(np.append(first_token, len(flat_ids)))
    return ExampleLayout(flat_ids, example_of, column, num_tokens, positions[first_token])


class GenomeWorker:
    """Everything one process needs to turn chunks into examples and jobs into shard files."""

    def __init__(self, settings: PrepSettings, sources: Sequence[SourceFile], records: Sequence[GenomeRecord],
                 out_dir: str, reader=None):
        """reader: what reads the records' bases (default: a RecordReader of the sources; the in-memory
        source passes fasta.InMemoryReader)."""
        self.settings = settings
        self.records = {record.index: record for record in records}
        self.out_dir = str(out_dir)  # a local directory or a URL (storage.as_path)
        self.tokenizer = settings.tokenizer()
        self.kmer_lengths = self.tokenizer.kmer_lengths().astype(np.int8)
        self.masker = Masker(self.tokenizer.vocab_size, settings.mask_rate, settings.max_predictions,
                             settings.mask_strategy, settings.mask_span)
        self.table = base_code_table(settings.soft_masked)
        self.reader = RecordReader(sources) if reader is None else reader
        self._splits: dict[int, RecordSplit] = {}

    def split_of(self, record: GenomeRecord) -> RecordSplit:
        if record.index not in self._splits:
            self._splits[record.index] = record_split(record, self.settings)
        return self._splits[record.index]

    def chunk_examples(self, record: GenomeRecord, chunk_index: int, dupe: int) -> ChunkExamples:
        return self._examples(self.chunk_tokens(record, chunk_index, dupe))

    def chunk_tokens(self, record: GenomeRecord, chunk_index: int, dupe: int) -> ChunkTokens:
        """The chunk's tokens: its contigs (N/IUPAC runs and split cuts), one seeded k per position."""
        prep = self.settings
        k_min, k_max, min_length = prep.k_min, prep.k_max, prep.min_contig_length
        chunk_start = chunk_index * prep.chunk_length
        chunk_end = min(chunk_start + prep.chunk_length, record.length)
        # Margins: min_length on the left decides whether a contig entering the
        # chunk is long enough; max(min_length, k_max) on the right also gives
        # the last tokens their bases.
        window_start = max(0, chunk_start - min_length)
        window_end = min(record.length, chunk_end + max(min_length, k_max))
        split = self.split_of(record)
        cuts = split.cuts[(split.cuts > window_start) & (split.cuts < window_end)] - window_start
        codes, runs = contig_runs(self.reader.read(record, window_start, window_end), self.table, cuts)
        rng = np.random.default_rng(np.random.SeedSequence([prep.seed, dupe, record.index, chunk_index]))
        # One k per chunk position (plus k_max - k_min for tokens past the end that are computed and dropped).
        ks = self.tokenizer.sample_k(chunk_end - chunk_start + k_max - k_min, rng)

        starts, ends = runs[:, 0] + window_start, runs[:, 1] + window_start
        held_out = split.is_validation(starts) if len(starts) else np.zeros(0, bool)
        long_enough = ends - starts >= min_length
        stats = empty_stats()
        if dupe == 0:
            # A contig is counted by the chunk holding its first base.
            owned = (starts >= chunk_start) & (starts < chunk_end)
            overlap = np.clip(np.minimum(ends, chunk_end) - np.maximum(starts, chunk_start), 0, None)
            for name, in_split in (("train", ~held_out), ("validation", held_out)):
                stats[name]["contigs"] = int((owned & long_enough & in_split).sum())
                stats[name]["skipped_contigs"] = int((owned & ~long_enough & in_split).sum())
                stats[name]["contig_bases"] = int(overlap[long_enough & in_split].sum())

        piece_ids, piece_positions = [], []
        for start, end, validation in zip(starts[long_enough], ends[long_enough], held_out[long_enough]):
            if validation and dupe > 0:
                continue
            first = max(int(start), chunk_start)
            last = min(chunk_end, int(end) - k_min + 1)  # positions first..last-1 start a token
            if last <= first:
                continue
            # Bases up to k_max - 1 past the last start suffice: k is clipped only at the true contig end.
            stop = min(int(end), last + k_max - 1)
            num = stop - first - k_min + 1
            ids = self.tokenizer.encode_contig_codes(
                codes[first - window_start : stop - window_start],
                ks[first - chunk_start : first - chunk_start + num],
            )[: last - first]
            piece_ids.append(ids)
            piece_positions.append(np.arange(first, last, dtype=np.int64))
        return ChunkTokens(piece_ids, piece_positions, split, rng, stats)

    def _examples(self, chunk: ChunkTokens) -> ChunkExamples:
        prep = self.settings
        rng, stats = chunk.rng, chunk.stats
        if not chunk.piece_ids:
            none = np.zeros(0, np.int64)
            true_ids = np.zeros((0, prep.seq_length), np.int64)
            return ChunkExamples(true_ids, none, self.masker.mask(true_ids, rng), none, none.astype(bool), none,
                                 stats)
        layout = layout_examples(chunk.piece_ids, chunk.piece_positions, prep.tokens_per_example)
        num_tokens, start_offset = layout.num_tokens, layout.start_offset
        rows = len(num_tokens)
        true_ids = np.full((rows, prep.seq_length), PAD_ID, dtype=np.int64)
        true_ids[:, 0] = CLS_ID
        true_ids[layout.example_of, layout.column + 1] = layout.flat_ids
        true_ids[np.arange(rows), num_tokens + 1] = SEP_ID
        is_validation = chunk.split.is_validation(start_offset)

        masked = self.masker.mask(true_ids, rng)
        leaked, predicted = leak_per_example(true_ids, masked, self.kmer_lengths)
        for name, in_split in (("train", ~is_validation), ("validation", is_validation)):
            stats[name]["examples"] += int(in_split.sum())
            stats[name]["tokens"] += int(num_tokens[in_split].sum())
            stats[name]["predictions"] += int(predicted[in_split].sum())
            stats[name]["leaked"] += int(leaked[in_split].sum())
        order = rng.permutation(rows)
        return ChunkExamples(true_ids, num_tokens, masked, start_offset, is_validation, order, stats)

    def run_job(self, job: Job, on_bases: Callable[[int], None] | None = None) -> dict:
        """Writes the job's shard part files; returns their paths, example counts, sizes and per-genome stats.

        Rerunning a job (a runner's retry) rewrites the same files with the same bytes.
        """
        # tfrecord imports TFDS's protobufs: loaded by the shard writer only, since tf-idf uses this
        # module's tokenization and never writes a shard.
        from dnavec_jax.data.tfrecord import ExampleEncoder, TFRecordWriter

        prep = self.settings
        encoder = ExampleEncoder(prep.seq_length, prep.max_predictions)
        writers = {
            split: TFRecordWriter(f"{self.out_dir}/{part_name(split, job.dupe, job.task)}")
            for split in (SPLITS if job.dupe == 0 else ("train",))
        }
        stats: dict[str, dict[str, dict[str, int]]] = {}  # str(file index) -> split -> counts
        try:
            for record_index, chunk_index in job.units:
                record = self.records[record_index]
                chunk = self.chunk_examples(record, chunk_index, job.dupe)
                add_stats(stats.setdefault(str(record.file_index), empty_stats()), chunk.stats)
                masked = chunk.masked
                for row in chunk.order:
                    writer = writers["validation" if chunk.is_validation[row] else "train"]
                    writer.write(encoder.encode(
                        masked.input_ids[row], chunk.num_real[row], masked.masked_lm_positions[row],
                        masked.masked_lm_ids[row], masked.masked_lm_weights[row], record_index,
                        chunk.start_offset[row], job.dupe,
                    ))
                if on_bases is not None:
                    on_bases(min(prep.chunk_length, record.length - chunk_index * prep.chunk_length))
        finally:
            files = {}
            for split, writer in writers.items():
                size = writer.close()
                if writer.num_records:
                    files[split] = (writer.path, writer.num_records, size)
        return {"dupe": job.dupe, "task": job.task, "files": files, "stats": stats}


def part_name(split: str, dupe: int, task: int) -> str:
    return f"part-{split}-{dupe:04d}-{task:06d}.tfrecord.tmp"


# ---- running jobs in worker processes ------------------------------------------
_WORKER: GenomeWorker | None = None
_PROGRESS = None


def _init_worker(settings_dict, sources, records, out_dir, progress_counter) -> None:
    global _WORKER, _PROGRESS
    _WORKER = GenomeWorker(PrepSettings.from_dict(settings_dict), [SourceFile(**s) for s in sources],
                           [GenomeRecord(**r) for r in records], out_dir)
    _PROGRESS = progress_counter


def _count_bases(bases: int) -> None:
    with _PROGRESS.get_lock():
        _PROGRESS.value += bases


def _run_job(job: Job) -> dict:
    return _WORKER.run_job(job, _count_bases)


def run_jobs(settings: PrepSettings, sources: Sequence[SourceFile], records: Sequence[GenomeRecord],
             jobs: Sequence[Job], out_dir: str, num_workers: int, on_bases: Callable[[int], None]) -> list[dict]:
    """Runs the jobs (in this process for one worker) and returns their results in job order."""
    if num_workers <= 1 or len(jobs) <= 1:
        worker = GenomeWorker(settings, sources, records, out_dir)
        try:
            return [worker.run_job(job, on_bases) for job in jobs]
        finally:
            worker.reader.close()
    # spawn, not fork: the parent may hold TensorFlow/JAX threads that fork would copy half-initialised.
    # ProcessPoolExecutor (not multiprocessing.Pool) fails fast if a worker dies (e.g. killed for memory).
    context = multiprocessing.get_context("spawn")
    counter = context.Value("q", 0)
    init_args = (settings.to_dict(), [dataclasses.asdict(s) for s in sources],
                 [dataclasses.asdict(r) for r in records], out_dir, counter)
    reported = 0
    with concurrent.futures.ProcessPoolExecutor(min(num_workers, len(jobs)), mp_context=context,
                                                initializer=_init_worker, initargs=init_args) as pool:
        futures = [pool.submit(_run_job, job) for job in jobs]
        try:
            pending = set(futures)
            while pending:
                done, pending = concurrent.futures.wait(pending, timeout=0.5,
                                                        return_when=concurrent.futures.FIRST_EXCEPTION)
                for future in done:
                    future.result()  # raises a worker's error now, not after the other jobs
                if counter.value > reported:
                    on_bases(counter.value - reported)
                    reported = counter.value
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return [future.result() for future in futures]


def default_num_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _open_source(args: tuple[str, str, int]) -> SourceFile:
    path, work_dir, file_index = args
    return open_source(path, Path(work_dir), file_index)


class ProcessPool:
    """The default executor: the per-file work and the shard jobs in worker processes on this machine."""

    def __init__(self, num_workers: int | None = None):
        self.num_workers = num_workers or default_num_workers()

    def check_paths(self, paths: Sequence[str], out_dir: str) -> None:
        """Every path this machine can read will do (local or URL)."""

    def work_dir(self, out_dir: str) -> str:
        """Where decompressed copies and .fai indexes go: local, since pyfaidx reads only local files."""
        return tempfile.mkdtemp(prefix="dnavec-prep-") if storage.is_remote(out_dir) else f"{out_dir}/_work"

    def open_sources(self, paths: Sequence[str], work_dir: str) -> list[SourceFile]:
        """open_source for every input, several files at once; the error of the first failing file (in
        input order) if any fails."""
        tasks = [(path, work_dir, index) for index, path in enumerate(paths)]
        workers = min(self.num_workers, len(tasks))
        if workers <= 1:
            return [_open_source(task) for task in tasks]
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_open_source, task) for task in tasks]
            concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            if any(future.done() and future.exception() for future in futures):
                for future in futures:
                    future.cancel()
                concurrent.futures.wait(futures)  # the running ones: their files are removed with the work dir
            return [future.result() for future in futures]  # raises the first failure in input order

    runner = "processes"  # metadata.json's "runner"

    def workers_used(self, num_jobs: int) -> int:
        return min(self.num_workers, num_jobs)

    def run_jobs(self, settings: PrepSettings, sources: Sequence[SourceFile], records: Sequence[GenomeRecord],
                 jobs: Sequence[Job], out_dir: str, on_bases: Callable[[int], None]) -> list[dict]:
        return run_jobs(settings, sources, records, jobs, out_dir, self.workers_used(len(jobs)), on_bases)


def collect_shards(results: Sequence[dict], final_path: Callable[[str, int, int], str]) -> dict[str, dict]:
    """Renames part files to their final shard names in (dupe, task) order; per split: files, lengths, bytes."""
    ordered = sorted(results, key=lambda result: (result["dupe"], result["task"]))
    splits = {}
    for split in SPLITS:
        parts = [result["files"][split] for result in ordered if split in result["files"]]
        targets = [final_path(split, index, len(parts)) for index in range(len(parts))]
        # A few renames at once: in a bucket each is a copy (docs/data.md, "Remote inputs and outputs").
        with concurrent.futures.ThreadPoolExecutor(storage.PARALLEL_REQUESTS) as threads:
            list(threads.map(lambda path, target: storage.as_path(path).replace(target),
                             [path for path, _, _ in parts], targets))
        files = [os.path.basename(target) for target in targets]
        splits[split] = {
            "files": files,
            "shard_lengths": [count for _, count, _ in parts],
            "shard_bytes": [size for _, _, size in parts],
            "num_bytes": sum(size for _, _, size in parts),
        }
    return splits
