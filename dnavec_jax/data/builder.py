"""The TFDS builder that writes the prepared dataset, and prepare_dataset(), its Python front door.

The builder fans shard writing out to worker processes (pipeline.ProcessPool; TFDS's own writer
serialises in one process, below the prep target) or, given Beam pipeline options, to an Apache Beam
runner (beam_prep.BeamExecutor: the same jobs as Beam elements), and registers the shards in its
DatasetInfo, so `tfds build` and `tfds.builder_from_directory` work as usual:

    tfds build --imports dnavec_jax.data.builder dna_kmer_mlm/demo_span --data_dir DIR
    tfds build ... --beam_pipeline_options=runner=FnApiRunner,direct_num_workers=8

docs/data.md ("Output layout", "hg38") has the configs and the manual-dir rule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyfaidx
import tensorflow_datasets as tfds

from dnavec_jax.data import fasta, pipeline, storage
from dnavec_jax.data.features import feature_shapes, tf_feature_spec  # noqa: F401  (re-exported)
from dnavec_jax.data.prepared import (  # noqa: F401  (re-exported)
    DATASET_NAME,
    FORMAT,
    METADATA_FILE,
    VOCAB_FILE,
    PreparedDataset,
    load_prepared,
    read_complete,
)
from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tf_runtime import import_extra_module, tensorflow

DATASET_VERSION = "1.0.0"
_WORK_DIR = "_work"  # decompressed FASTA and .fai indexes, deleted before the dataset is complete


@dataclasses.dataclass(eq=False)
class DnaKmerMlmConfig(tfds.core.BuilderConfig):
    """A BuilderConfig carrying the PrepSettings (a dict is accepted, e.g. from `tfds build --config '{...}'`)."""

    settings: PrepSettings = PrepSettings()

    def __post_init__(self):
        if isinstance(self.settings, Mapping):
            self.settings = PrepSettings.from_dict(self.settings)
        self.settings.validate()


def _config(name: str, description: str, **settings) -> DnaKmerMlmConfig:
    return DnaKmerMlmConfig(name=name, description=description, settings=PrepSettings(**settings))


class DnaKmerMlm(tfds.core.GeneratorBasedBuilder):
    """Variable-length k-mer masked-LM examples from genome FASTA (BERT pretraining features)."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Initial release."}
    BUILDER_CONFIGS = [
        _config("demo_token", "embedded 1 Mbp chr22 demo corpus, token masking"),
        _config("demo_span", "embedded 1 Mbp chr22 demo corpus, span masking", mask_strategy="span"),
        _config("hg38_token", "hg38 chr1-22 from manual_dir/hg38.fa.gz, token masking", fasta=("hg38.fa.gz",)),
        _config("hg38_span", "hg38 chr1-22 from manual_dir/hg38.fa.gz, span masking", fasta=("hg38.fa.gz",),
                mask_strategy="span"),
    ]
    DEFAULT_CONFIG_NAME = "demo_span"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the FASTA files named in the config (hg38.fa.gz for the hg38 configs) in the manual dir, e.g. "
        "`python data_prep/download_hg38.py --output_dir DIR` then `--manual_dir DIR`."
    )

    def __init__(self, *, num_workers: int | None = None, progress: bool = True, **kwargs):
        self._num_workers = num_workers
        self._progress = progress
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        settings = self.builder_config.settings
        features = tfds.features.FeaturesDict({
            name: tfds.features.Tensor(shape=shape, dtype=dtype)
            for name, (shape, dtype) in feature_shapes(settings.seq_length, settings.max_predictions).items()
        })
        return self.dataset_info_from_configs(
            description=(
                "BERT masked-LM pretraining examples over variable-length k-mer tokens of genomic DNA "
                "(features named as google-research/bert create_pretraining_data.py; masked_lm_weights float32). "
                "Settings, counts and the overlap-leak figure are in metadata.json."
            ),
            features=features,
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # the order is ours: deterministic, shuffled within each chunk
            homepage="https://hgdownload.soe.ucsc.edu/goldenPath/hg38/bigZips/",
        )

    def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
        # The dataset is never hosted on TFDS's GCS bucket: do not probe the network for it.
        download_config = download_config or tfds.download.DownloadConfig()
        download_config = dataclasses.replace(download_config, try_download_gcs=False)
        return super().download_and_prepare(download_dir=download_dir, download_config=download_config, **kwargs)

    def _split_generators(self, dl_manager):
        raise NotImplementedError("DnaKmerMlm writes its shards in _download_and_prepare (worker processes)")

    def _generate_examples(self, **kwargs):
        raise NotImplementedError("DnaKmerMlm writes its shards in _download_and_prepare (worker processes)")

    def _download_and_prepare(self, dl_manager, download_config=None) -> None:
        settings = self.builder_config.settings
        paths = [self._resolve_fasta(path, dl_manager) for path in settings.fasta]
        out_dir = str(self.data_path)  # a local directory, or a URL for a gs:// data_dir

        def final_path(split: str, index: int, count: int) -> str:
            return str(self._get_filename_template(split).sharded_filepath(shard_index=index, num_shards=count))

        executor = self._executor(download_config)
        executor.check_paths(paths, out_dir)
        metadata, shards = write_dataset(settings, paths, out_dir, final_path, executor, self._progress)
        split_infos = [
            tfds.core.SplitInfo(name=split, shard_lengths=info["shard_lengths"], num_bytes=info["num_bytes"],
                                filename_template=self._get_filename_template(split))
            for split, info in shards.items() if info["shard_lengths"]
        ]
        self.info.set_splits(tfds.core.SplitDict(split_infos))
        self.info.metadata.update(metadata)

    def _executor(self, download_config):
        """Worker processes, or a Beam runner where TFDS's download config carries Beam options or a runner
        (`tfds build --beam_pipeline_options=...`, prepare_dataset(beam_options=...))."""
        if download_config is None or (download_config.beam_options is None and download_config.beam_runner is None):
            return pipeline.ProcessPool(self._num_workers)
        beam_prep = import_extra_module("dnavec_jax.data.beam_prep", "data prep on Apache Beam", "beam")
        return beam_prep.BeamExecutor(download_config.beam_options, download_config.beam_runner,
                                      num_workers=self._num_workers)

    @staticmethod
    def _resolve_fasta(path: str, dl_manager) -> str:
        if Path(path).is_absolute() or storage.is_remote(path):
            return path
        try:
            manual_dir = Path(dl_manager.manual_dir)
        except AssertionError:
            raise DNAVecError(
                f"{path}: relative FASTA paths are read from the manual dir, which is missing or empty; "
                "pass --manual_dir DIR holding the file (e.g. from data_prep/download_hg38.py)"
            ) from None
        return str(manual_dir / path)


# ---- the one path that writes a dataset --------------------------------------
def write_dataset(settings: PrepSettings, fasta_paths: list[str], out_dir: str, final_path, executor, progress
                  ) -> tuple[dict[str, Any], dict[str, dict]]:
    """Reads the genomes, writes shards + vocab.txt into out_dir; returns (metadata, per-split shard info).

    executor (pipeline.ProcessPool or beam_prep.BeamExecutor) runs the per-file work and the shard jobs;
    the plan, the shard writer and everything here are the same for both.
    """
    started = time.perf_counter()
    paths = fasta_paths or [str(fasta.DEMO_FASTA)]
    work_dir = executor.work_dir(out_dir)
    try:
        genome = fasta.open_genome(paths, work_dir, settings.chromosomes, executor.open_sources)
        sources, skipped = genome.sources, genome.skipped
        records = pipeline.hold_out_in_every_genome(genome.records, settings)
        jobs = pipeline.plan_jobs(settings, records)
        with fasta.bases_bar(sum(job.bases for job in jobs), "tokenize+mask+write", progress) as bar:
            results = executor.run_jobs(settings, sources, records, jobs, out_dir, bar.update)
    finally:
        storage.rmtree(storage.as_path(work_dir))
    per_genome = pipeline.genome_stats(results, len(sources))
    stats = pipeline.empty_stats()
    for part in per_genome:
        pipeline.add_stats(stats, part)
    if stats["train"]["examples"] == 0:
        raise DNAVecError(
            f"{', '.join(paths)}: the selected records hold no contig of at least min_contig_length="
            f"{settings.min_contig_length} A/C/G/T bases, so there is nothing to train on"
        )
    shards = pipeline.collect_shards(results, final_path)
    tokenizer = settings.tokenizer()
    tokenizer.write_vocab(storage.as_path(out_dir) / VOCAB_FILE)
    seconds = time.perf_counter() - started
    genomes = _genomes(sources, records, per_genome)
    metadata = _metadata(settings, sources, records, skipped, stats, genomes, shards, tokenizer, executor,
                         len(jobs), seconds)
    return metadata, shards


def _genomes(sources, records, per_genome) -> list[dict[str, Any]]:
    """Per input file: its name, selected records and bases, and its contigs, examples and tokens per split."""
    genomes = []
    for file_index, (source, stats) in enumerate(zip(sources, per_genome)):
        lengths = [record.length for record in records if record.file_index == file_index]
        genomes.append({
            "name": fasta.genome_name(source.path),
            "source": file_index,
            "records": len(lengths),
            "bases": sum(lengths),
            **{key: {split: stats[split][stat] for split in pipeline.SPLITS}
               for key, stat in (("contigs", "contigs"), ("contig_bases", "contig_bases"),
                                 ("num_examples", "examples"), ("num_tokens", "tokens"))},
        })
    return genomes


def _leak(stats: dict[str, int]) -> float | None:
    return stats["leaked"] / stats["predictions"] if stats["predictions"] else None


def _metadata(settings, sources, records, skipped, stats, genomes, shards, tokenizer, executor, num_jobs, seconds
              ) -> dict[str, Any]:

    split_names = pipeline.SPLITS
    leaked = sum(stats[s]["leaked"] for s in split_names)
    predicted = sum(stats[s]["predictions"] for s in split_names)
    return {
        "format": FORMAT,
        "format_version": 1,
        "settings": settings.to_dict(),
        "fingerprint": settings.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "vocab_file": VOCAB_FILE,
        "seq_length": settings.seq_length,
        "max_predictions": settings.max_predictions,
        "k_min": settings.k_min,
        "k_max": settings.k_max,
        "k_distribution": "uniform" if tokenizer.k_probs is None else "weighted",
        "k_probabilities": (np.full(len(tokenizer.k_values), 1 / len(tokenizer.k_values))
                            if tokenizer.k_probs is None else tokenizer.k_probs).tolist(),
        "mask_rate": settings.mask_rate,
        "mask_strategy": settings.mask_strategy,
        "mask_span": settings.effective_mask_span,
        "mask_replacement": {"mask": 0.8, "random_kmer": 0.1, "unchanged": 0.1},
        "seed": settings.seed,
        "dupe_factor": settings.dupe_factor,
        "masked_lm_weights_dtype": "float32",
        "features": {name: {"shape": list(shape), "dtype": str(dtype)}
                     for name, (shape, dtype) in feature_shapes(settings.seq_length, settings.max_predictions).items()},
        "sources": [{"path": s.path, "sha256": s.sha256, "size_bytes": s.size_bytes, "gzipped": s.gzipped}
                    for s in sources],
        "records": [{"index": r.index, "name": r.name, "length": r.length, "source": r.file_index} for r in records],
        "records_used": len(records),
        "records_skipped": len(skipped),
        "skipped_record_names": skipped[:200],
        "genomes": genomes,
        "num_examples": {s: stats[s]["examples"] for s in split_names},
        "num_tokens": {s: stats[s]["tokens"] for s in split_names},
        "num_predictions": {s: stats[s]["predictions"] for s in split_names},
        "contigs": {s: stats[s]["contigs"] for s in split_names},
        "skipped_contigs": {s: stats[s]["skipped_contigs"] for s in split_names},
        "contig_bases": {s: stats[s]["contig_bases"] for s in split_names},
        "leak": {s: _leak(stats[s]) for s in split_names},
        "leak_figure": leaked / predicted if predicted else None,
        "files": {s: shards[s]["files"] for s in split_names},
        "shard_lengths": {s: shards[s]["shard_lengths"] for s in split_names},
        # TFRecord has no end marker: a shard cut at a record boundary still reads as valid,
        # so load_prepared compares every file's size with this.
        "shard_bytes": {s: shards[s]["shard_bytes"] for s in split_names},
        "prep_seconds": round(seconds, 3),
        "num_workers": executor.workers_used(num_jobs),  # None: as many as the Beam runner chose
        "runner": executor.runner,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "tensorflow_datasets": tfds.__version__, "pyfaidx": pyfaidx.__version__},
    }


# ---- the Python front door ---------------------------------------------------
def _ensure_writable(data_dir) -> None:
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".write-test-{time.monotonic_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise DNAVecError(f"{data_dir}: output directory is not writable ({error.strerror or error})") from None


def _absolute(settings: PrepSettings) -> PrepSettings:
    return settings.replace(fasta=tuple(p if storage.is_remote(p) else str(Path(p).expanduser().resolve())
                                        for p in settings.fasta))


def prepare_dataset(settings: PrepSettings, data_dir, num_workers: int | None = None,
                    progress: bool = True, beam_options=None):
    """Builds the dataset under data_dir (or returns the existing one with identical settings).

    data_dir: a local directory or a URL (gs://, s3://: docs/data.md, "Remote inputs and outputs").
    beam_options: None (worker processes on this machine), or Apache Beam pipeline options that run the
    same work on a Beam runner: a PipelineOptions, or a string in TFDS's --beam_pipeline_options syntax
    (comma-separated key=value). num_workers: processes, or the local Beam runner's direct_num_workers.
    Returns the TFDS version directory (dataset_info.json, metadata.json, vocab.txt, shards): a Path,
    or an etils.epath.Path for a URL.
    """
    settings.validate()
    settings = _absolute(settings)
    fasta.check_fasta_paths(settings.fasta)
    if beam_options is not None:  # bad options fail here, before anything is written
        beam_prep = import_extra_module("dnavec_jax.data.beam_prep", "data prep on Apache Beam", "beam")
        beam_options, _ = beam_prep.resolve_options(beam_options, num_workers=num_workers)
    data_dir = storage.as_path(data_dir) if storage.is_remote(data_dir) else Path(data_dir).expanduser().resolve()
    _ensure_writable(data_dir)
    config = DnaKmerMlmConfig(name=settings.config_name(), description="prepared with prepare_dataset",
                              settings=settings)
    version_dir = data_dir / DATASET_NAME / config.name / DATASET_VERSION
    existing = read_complete(version_dir)
    if existing is not None:
        if existing.metadata.get("settings") != settings.to_dict():
            raise DNAVecError(f"{version_dir}: holds a dataset with other settings under the same name; remove it")
        if progress:
            print(f"reusing the prepared dataset {version_dir}")
        return version_dir
    tensorflow("data prep")  # imported through the one place that keeps it off accelerators
    started = time.time()
    try:
        # TFDS's own chatter ("Using custom data configuration ...", "Downloading and preparing dataset
        # Unknown size ...") says nothing useful here: the progress bar and summary do.
        with _quiet_tfds():
            builder = DnaKmerMlm(data_dir=str(data_dir), config=config, num_workers=num_workers, progress=progress)
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(beam_options=beam_options))
    except BaseException:
        _remove_leftovers(data_dir, config.name)
        raise
    _remove_leftovers(data_dir, config.name)  # only TFDS's empty download dirs, after success
    for stale in _stale_partial_datasets(version_dir.parent, started):
        storage.rmtree(stale)
        if progress:
            print(f"removed {stale}: a partial dataset of this configuration left by an earlier, killed prep")
    if progress:
        print(format_summary(read_complete(version_dir)))
    return version_dir


@contextlib.contextmanager
def _quiet_tfds():
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logger.setLevel(level)


def _stale_partial_datasets(config_dir, started: float) -> list:
    """TFDS tmp directories (`incomplete.*`) of this configuration that nothing wrote to since `started`.

    A prep that was killed (SIGKILL, power loss) cannot remove its own tmp directory, which
    for hg38 holds gigabytes. Once a prep of the same configuration has completed, such a
    directory can never become a dataset. One that a concurrent prep is still writing has
    files newer than `started`, and is left alone.
    """
    if not isinstance(config_dir, Path):
        return []  # an object store: modification times of "directories" mean nothing there (docs/data.md)
    stale = []
    for candidate in config_dir.glob("incomplete*") if config_dir.is_dir() else ():
        if candidate.is_dir():
            newest = max((p.stat().st_mtime for p in candidate.rglob("*")), default=candidate.stat().st_mtime)
            if newest < started:
                stale.append(candidate)
    return stale


def _remove_leftovers(data_dir, config_name: str) -> None:
    """Drops the empty directories TFDS created (after a failure: never a complete dataset)."""
    dataset_dir = data_dir / DATASET_NAME
    config_dir = dataset_dir / config_name
    for directory in (config_dir, dataset_dir):
        if directory.is_dir() and not any(p for p in directory.iterdir() if not p.name.startswith(".")):
            storage.rmtree(directory)
    downloads = data_dir / "downloads"
    if downloads.is_dir() and not storage.holds_files(downloads):
        storage.rmtree(downloads)


def format_summary(dataset: PreparedDataset | None) -> str:
    """A few lines for the end of a prep run."""
    if dataset is None:
        return "no complete dataset"
    m = dataset.metadata
    leak = m.get("leak_figure")
    lines = [
        f"prepared {dataset.path}",
        f"  records: {m['records_used']} used, {m['records_skipped']} skipped by the chromosome selection",
        "  contigs: " + ", ".join(f"{s} {m['contigs'][s]:,} ({m['contig_bases'][s]:,} bp)" for s in m["contigs"])
        + f"; skipped (< {m['settings']['min_contig_length']} bp): {sum(m['skipped_contigs'].values()):,}",
        "  examples: " + ", ".join(f"{s} {n:,}" for s, n in m["num_examples"].items())
        + f"  (dupe_factor {m['dupe_factor']})",
        "  tokens: " + ", ".join(f"{s} {n:,}" for s, n in m["num_tokens"].items()),
        f"  leak figure ({m['mask_strategy']} masking"
        + (f", span {m['mask_span']}" if m["mask_strategy"] == "span" else "")
        + f"): {leak:.1%} of masked tokens have all their bases visible in unmasked neighbours"
        if leak is not None else "  leak figure: n/a",
        f"  time: {m['prep_seconds']:.1f} s with "
        + (f"{m['num_workers']} worker(s)" if m["num_workers"] is not None else "the runner's workers")
        + (f" on Beam ({m['runner']})" if m.get("runner", "processes") != "processes" else ""),
    ]
    return "\n".join(lines)

