"""Data prep on Apache Beam: the same shards as the process pool on the local runner (2 processes) and on
a real Dask cluster that loses a worker mid-job, remote inputs and data_dir, runner options, user errors.
(docs/data.md, "Apache Beam")"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import data_prep_script
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin
from fake_bucket import fake_gcs
from test_data_prep import SMALL, leftovers, make_genome, write_genome

from dnavec_jax.data import PrepSettings, load_prepared, prepare_dataset
from dnavec_jax.data.beam_prep import resolve_options
from dnavec_jax.errors import DNAVecError

LOCAL_RUNNER = "runner=FnApiRunner,direct_running_mode=multi_processing,direct_num_workers=2"
IN_MEMORY = "direct_running_mode=in_memory"  # one process: cheap where the runner is not what is tested
DASK = "runner=apache_beam.runners.dask.dask_runner.DaskRunner,dask_client_address={}"


@pytest.fixture(scope="module")
def genomes(tmp_path_factory):
    """Two genomes (a plain FASTA and a gzipped one), prepared once by the process pool."""
    root = tmp_path_factory.mktemp("genomes")
    files = write_genome(make_genome(np.random.default_rng(5)), root)
    settings = PrepSettings(fasta=files, **SMALL)
    pool = prepare_dataset(settings, tmp_path_factory.mktemp("pool"), num_workers=1, progress=False)
    return {"root": root, "files": files, "settings": settings, "pool": pool}


def assert_same_dataset(expected: Path, actual: Path, runner: str, moved: bool = False) -> None:
    """Byte-identical shards and vocab.txt; the same dataset_info.json and metadata.json but for the run's
    own figures (time, date, runner) and, where the inputs were moved, their paths (and the fingerprint)."""
    names = sorted(path.name for path in expected.iterdir())
    assert names == sorted(path.name for path in Path(actual).iterdir())
    assert sum("tfrecord" in name for name in names) >= 6
    for name in names:
        if name.endswith(".json"):
            continue
        assert (expected / name).read_bytes() == (Path(actual) / name).read_bytes(), name
    ours, theirs = (json.loads((path / "metadata.json").read_text()) for path in (expected, Path(actual)))
    assert theirs["runner"] == runner and ours["runner"] == "processes"
    for key in ("prep_seconds", "created", "num_workers", "runner") + (("settings", "fingerprint") if moved else ()):
        ours.pop(key), theirs.pop(key)
    if moved:
        for metadata in (ours, theirs):
            for source in metadata["sources"]:
                source.pop("path")
    assert ours == theirs
    info_ours, info_theirs = (json.loads((path / "dataset_info.json").read_text()) for path in (expected, Path(actual)))
    if moved:
        info_ours.pop("configName"), info_theirs.pop("configName")  # it holds the settings' fingerprint
    assert info_ours == info_theirs


def test_two_genomes_on_the_local_runner_give_the_process_pools_shards(genomes, tmp_path):
    path = prepare_dataset(genomes["settings"], tmp_path, progress=False, beam_options=LOCAL_RUNNER)
    assert_same_dataset(genomes["pool"], path, "FnApiRunner")
    metadata = load_prepared(path).metadata
    assert metadata["num_workers"] == 2
    # Each genome keeps its name and figures, with held-out blocks in each.
    genome = {g["name"]: g for g in metadata["genomes"]}
    assert sorted(genome) == ["a", "b"] and genome["b"]["bases"] == 9_000 and genome["a"]["records"] == 2
    for split in ("train", "validation"):
        assert all(g["num_examples"][split] > 0 for g in genome.values())
        assert sum(g["num_examples"][split] for g in genome.values()) == metadata["num_examples"][split]
        assert sum(g["contig_bases"][split] for g in genome.values()) == metadata["contig_bases"][split]


class _KillOnceMidJob(WorkerPlugin):
    """A Dask worker plugin: the first worker process that holds a shard's part file open with bytes in it
    (a job half done) kills itself (os._exit, as the OOM killer or a lost VM would), once in the cluster."""

    name = "kill-once-mid-job"

    def __init__(self, marker: str):
        self.marker = marker

    def setup(self, worker):
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        process = psutil.Process()
        while not os.path.exists(self.marker):
            writing = [f.path for f in process.open_files() if "part-train-" in f.path]
            if any(os.path.getsize(path) > 0 for path in writing):
                try:
                    os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    return
                os._exit(1)
            time.sleep(0.002)


def test_dask_cluster_retries_a_worker_lost_mid_job_with_the_same_shards(genomes, tmp_path):
    marker = tmp_path / "killed"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=50) as cluster, Client(cluster) as client:
        client.register_plugin(_KillOnceMidJob(str(marker)))
        path = prepare_dataset(genomes["settings"], tmp_path / "data", progress=False,
                               beam_options=DASK.format(cluster.scheduler_address))
    assert marker.exists()  # a worker did die with a job in flight
    assert_same_dataset(genomes["pool"], path, "DaskRunner")
    assert not list((tmp_path / "data").rglob("*.tmp")) and not list((tmp_path / "data").rglob("_work"))


def test_remote_inputs_and_data_dir_through_an_object_store(genomes, tmp_path, monkeypatch):
    """gs:// inputs and data_dir (a stand-in bucket on the local disk): the per-file stage works on a local
    copy and stages it in the bucket, the shard workers copy it back to their disk, everything else is
    written to the bucket; the same shards, nothing left in the bucket's work directory."""
    bucket = tmp_path / "bucket"
    (bucket / "genomes").mkdir(parents=True)
    for file in genomes["files"]:
        shutil.copy(file, bucket / "genomes")
    (bucket / "genomes" / "list.txt").write_text("# the two genomes\na.fa\nb.fa.gz  # gzipped\n")
    with fake_gcs(tmp_path, monkeypatch):
        from dnavec_jax.data.fasta import read_fasta_list

        paths = read_fasta_list("gs://bucket/genomes/list.txt")
        assert paths == ["gs://bucket/genomes/a.fa", "gs://bucket/genomes/b.fa.gz"]
        settings = genomes["settings"].replace(fasta=tuple(paths))
        on_beam = prepare_dataset(settings, "gs://bucket/beam", progress=False, beam_options=IN_MEMORY)
        in_pool = prepare_dataset(settings, "gs://bucket/pool", num_workers=1, progress=False)
        assert str(on_beam).startswith("gs://bucket/beam/dna_kmer_mlm/")
        # The same settings again: the dataset in the bucket is found and returned as it is.
        assert prepare_dataset(settings, "gs://bucket/beam", progress=False, beam_options=IN_MEMORY) == on_beam
        remote = load_prepared("gs://bucket/beam")
        assert remote.path == on_beam and remote.files("train")[0].startswith(f"{on_beam}/dna_kmer_mlm-train.")
        assert remote.num_examples("train") == load_prepared(genomes["pool"]).num_examples("train")
    for path, runner in ((on_beam, "FnApiRunner"), (in_pool, "processes")):
        local = tmp_path / str(path).removeprefix("gs://")
        assert_same_dataset(genomes["pool"], local, runner, moved=True)
        assert [source["path"] for source in load_prepared(local).metadata["sources"]] == paths
    left = sorted(p.relative_to(bucket).parts[0] for p in bucket.rglob("*") if p.is_file())
    assert set(left) == {"genomes", "beam", "pool"} and not list(bucket.rglob("_work"))
    assert not list(bucket.rglob("*.tmp")) and not list(bucket.rglob("*.partial"))


@pytest.mark.parametrize("case, expected", [("truncated_gz", "bad.fa.gz: truncated gzip file"),
                                            ("no_matching_record", "no record matches")])
def test_a_failing_beam_run_is_one_line_and_leaves_nothing(tmp_path, case, expected):
    """A user error in a worker (the per-file stage), or in the launcher after a Beam stage ran, reaches the
    caller as the same one line as without Beam, and the failed run leaves no dataset and no file."""
    good = tmp_path / "good.fa"
    good.write_text(">chr1\n" + "ACGT" * 2_000 + "\n")
    bad = tmp_path / "bad.fa.gz"
    dna = np.frombuffer(b"ACGT", np.uint8)[np.random.default_rng(1).integers(0, 4, 200_000)].tobytes()
    bad.write_bytes(gzip.compress(b">chr2\n" + dna)[:30_000])
    fasta, chromosomes = ((good, bad), "chr1-22") if case == "truncated_gz" else ((good,), "chr3")
    settings = PrepSettings(fasta=tuple(map(str, fasta)), chromosomes=chromosomes, seq_length=64, max_predictions=10)
    messages = []
    for beam_options in (None, IN_MEMORY):
        with pytest.raises(DNAVecError) as error:
            prepare_dataset(settings, tmp_path / "out", num_workers=1, progress=False, beam_options=beam_options)
        messages.append(str(error.value))
        assert leftovers(tmp_path / "out") == ([], [])
    assert messages[1] == messages[0] and "\n" not in messages[1] and expected in messages[1], messages


def test_tfds_build_command_on_beam(tmp_path, genomes):
    """`tfds build --beam_pipeline_options=...` runs the jobs on Beam (TFDS parses the options)."""
    tfds_build = data_prep_script("tfds_build")
    config = json.dumps({"name": "small", "settings": {"fasta": ["b.fa.gz"], "chromosomes": "all",
                                                       "seq_length": 32, "max_predictions": 5}})
    tfds_build.main(["dna_kmer_mlm", "--config", config, "--data_dir", str(tmp_path),
                     "--manual_dir", str(genomes["root"]), f"--beam_pipeline_options={IN_MEMORY}"])
    dataset = load_prepared(tmp_path)
    assert dataset.metadata["runner"] == "FnApiRunner" and dataset.num_examples("train") > 0


def test_pipeline_options_defaults_and_one_line_errors():
    def resolved(text, **kwargs):
        options, runner = resolve_options(text, **kwargs)
        return runner, options.get_all_options(drop_default=True)

    # No runner, or DirectRunner (which would try the PrismRunner's download first): FnApiRunner, processes.
    for text in ("direct_num_workers=3", "runner=DirectRunner,direct_num_workers=3"):
        runner, values = resolved(text)
        assert runner == "FnApiRunner" and values["runner"] == "FnApiRunner"
        assert values["direct_running_mode"] == "multi_processing" and values["direct_num_workers"] == 3
    assert resolved("runner=FnApiRunner", num_workers=5)[1]["direct_num_workers"] == 5
    runner, values = resolved(IN_MEMORY, num_workers=5)  # asked for: kept, and one process it is
    assert values.get("direct_running_mode", "in_memory") == "in_memory" and "direct_num_workers" not in values
    # Dask: one job a partition unless the user sizes them.
    runner, values = resolved(DASK.format("tcp://127.0.0.1:8786"))
    assert runner == "DaskRunner" and values["partition_size"] == 1 and values["address"] == "tcp://127.0.0.1:8786"
    assert resolved(DASK.format("tcp://h:1") + ",dask_npartitions=7")[1].get("partition_size") is None
    assert resolved("runner=FlinkRunner,flink_job_server_jar=/jars/job-server.jar")[0] == "FlinkRunner"
    assert resolved("runner=SparkRunner,job_endpoint=localhost:8099")[0] == "SparkRunner"
    for text, expected in [
        ("runner=FlinkRunner", "needs flink_job_server_jar=PATH"),
        ("runner=SparkRunner,spark_master_url=spark://h:7077", "needs spark_job_server_jar=PATH"),
        ("runner=PrismRunner", "needs prism_location=PATH"),
        ("direct_num_worker=2", "unknown option(s) direct_num_worker"),
        ("direct_num_workers=two", "direct_num_workers: invalid int value: 'two'"),
        ("direct_running_mode=fast", "invalid choice: 'fast'"),
        ("runner=Fast", "unknown runner 'Fast'"),
        ("runner=FnApiRunner,,x=1", "expected comma-separated key=value"),
    ]:
        with pytest.raises(DNAVecError) as error:
            resolve_options(text)
        assert "\n" not in str(error.value) and expected in str(error.value), str(error.value)
