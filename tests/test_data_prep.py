"""End-to-end data prep: tokens match the genome, no token lost at chunk edges, splits share no base,
determinism across worker counts, reuse, and bad input leaving nothing behind."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, data_prep_script

from dnavec_jax.data import PrepSettings, load_prepared, prepare_dataset
from dnavec_jax.data.prepared import find_prepared
from dnavec_jax.data.tfrecord import decode_example, read_records
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tokenization import CLS_ID, MASK_ID, NUM_SPECIAL, PAD_ID, SEP_ID, KmerTokenizer

# Small settings with many chunk, shard and split edges: 62 tokens per example, chunks of
# 4,960 bases, blocks of 4,000 bases with 20% held out.
SMALL = dict(
    chromosomes="chr1-22", seq_length=64, max_predictions=10, chunk_bases=5_000, shard_bases=20_000,
    validation_fraction=0.2, validation_block_size=4_000, min_contig_length=20, mask_strategy="span",
    mask_span=4, dupe_factor=2, seed=11,
)


def make_genome(rng):
    """Records with N runs, IUPAC letters, soft-masked stretches and short contigs."""

    def dna(length):
        return "".join(rng.choice(list("ACGT"), length))

    chr1 = list(dna(47_000))
    for start, end in [(0, 300), (9_000, 9_500), (20_011, 20_012), (31_000, 33_000), (46_800, 47_000)]:
        chr1[start:end] = "N" * (end - start)
    for position in rng.integers(0, 47_000, 40):
        chr1[position] = rng.choice(list("RYKMSWBDHV"))
    chr1[12_000:15_000] = [b.lower() for b in chr1[12_000:15_000]]
    # Short contigs (< min_contig_length 20) separated by N: skipped and counted.
    chr2 = list(dna(18_000))
    for start in range(2_000, 3_000, 25):
        chr2[start + 10 : start + 25] = "N" * 15
    return {"chr1": "".join(chr1), "chr2": "".join(chr2), "chrX": dna(3_000), "chr1_KI270706v1_random": dna(900),
            "3": dna(9_000)}


def write_genome(records, root) -> tuple[str, str]:
    """a.fa (70-column lines: chr1, chrX, chr1_KI270706v1_random, chr2) and b.fa.gz (record 3 on one line)."""
    plain = root / "a.fa"
    with open(plain, "w") as handle:
        for name in ("chr1", "chrX", "chr1_KI270706v1_random", "chr2"):
            handle.write(f">{name}\n")
            handle.writelines(records[name][i : i + 70] + "\n" for i in range(0, len(records[name]), 70))
    gz = root / "b.fa.gz"
    gz.write_bytes(gzip.compress(f">3 Ensembl name\n{records['3']}\n".encode(), mtime=0))
    return str(plain), str(gz)


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    records = make_genome(np.random.default_rng(5))
    root = tmp_path_factory.mktemp("genome")
    return {"records": records, "files": write_genome(records, root), "root": root}


def read_split(path, split):
    dataset = load_prepared(path)
    return [decode_example(record) for file in dataset.files(split) for record in read_records(file)]


@pytest.fixture(scope="module")
def prepared(genome, tmp_path_factory):
    settings = PrepSettings(fasta=genome["files"], **SMALL)
    one = prepare_dataset(settings, tmp_path_factory.mktemp("one"), num_workers=1, progress=False)
    two = prepare_dataset(settings, tmp_path_factory.mktemp("two"), num_workers=2, progress=False)
    return {"settings": settings, "one": one, "two": two,
            "train": read_split(one, "train"), "validation": read_split(one, "validation")}


def true_ids(example):
    """Undo the masking with masked_lm_ids."""
    ids = example["input_ids"].copy()
    real = example["masked_lm_weights"] > 0
    ids[example["masked_lm_positions"][real]] = example["masked_lm_ids"][real]
    return ids


def test_every_token_is_the_genome_at_its_position(prepared, genome):
    tokenizer = KmerTokenizer(3, 8)
    metadata = load_prepared(prepared["one"]).metadata
    names = [record["name"] for record in metadata["records"]]
    assert names == ["chr1", "chr2", "3"]  # chrX and the _random record left out
    sources = {name: genome["records"][name].upper() for name in names}
    for split in ("train", "validation"):
        for example in prepared[split]:
            ids = true_ids(example)
            num = int(example["input_mask"].sum()) - 2
            assert ids[0] == CLS_ID and ids[num + 1] == SEP_ID and (ids[num + 2 :] == PAD_ID).all()
            assert (example["input_mask"][: num + 2] == 1).all() and (example["segment_ids"] == 0).all()
            kmers = tokenizer.decode_ids(ids[1 : num + 1])
            source = sources[names[int(example["record_index"][0])]]
            start = int(example["start_offset"][0])
            for offset, kmer in enumerate(kmers):
                assert 3 <= len(kmer) <= 8
                assert source[start + offset : start + offset + len(kmer)] == kmer  # no N/IUPAC inside
            # masked_lm_weights are float32 as BERT writes them; predictions only on k-mers.
            assert example["masked_lm_weights"].dtype == np.float32
            real = example["masked_lm_weights"] > 0
            assert (example["masked_lm_ids"][real] >= NUM_SPECIAL).all()
            assert 1 <= real.sum() <= 10 and (example["input_ids"] == MASK_ID).sum() <= real.sum()


def token_starts(examples, dupe):
    starts = []
    for example in examples:
        if int(example["dupe_index"][0]) != dupe:
            continue
        num = int(example["input_mask"].sum()) - 2
        record, start = int(example["record_index"][0]), int(example["start_offset"][0])
        starts.extend((record, start + offset) for offset in range(num))
    return starts


def test_no_token_lost_or_duplicated_at_chunk_edges(prepared, genome):
    """Each copy starts exactly one token at every base that can start one."""
    from dnavec_jax.data.fasta import GenomeRecord
    from dnavec_jax.data.pipeline import record_split
    from dnavec_jax.tokenization import acgt_runs, sequence_to_codes

    settings = prepared["settings"]
    metadata = load_prepared(prepared["one"]).metadata
    expected = set()
    for record in metadata["records"]:
        sequence = genome["records"][record["name"]]
        cuts = record_split(GenomeRecord(record["index"], record["name"], len(sequence), 0), settings).cuts
        edges = sorted(set([0, len(sequence)] + cuts.tolist()))
        for low, high in zip(edges[:-1], edges[1:]):
            for start, end in acgt_runs(sequence_to_codes(sequence[low:high])):
                if end - start >= settings.min_contig_length:
                    expected.update((record["index"], low + p) for p in range(start, end - 2))
    everything = prepared["train"] + prepared["validation"]
    copy0 = token_starts(everything, 0)
    assert len(copy0) == len(set(copy0)) and set(copy0) == expected
    copy1 = token_starts(prepared["train"], 1)
    train0 = token_starts(prepared["train"], 0)
    assert sorted(copy1) == sorted(train0)  # the second copy covers the same training bases...
    ids0 = {(int(e["record_index"][0]), int(e["start_offset"][0])): true_ids(e).tolist()
            for e in prepared["train"] if e["dupe_index"][0] == 0}
    differs = sum(ids0[(int(e["record_index"][0]), int(e["start_offset"][0]))] != true_ids(e).tolist()
                  for e in prepared["train"] if e["dupe_index"][0] == 1)
    assert differs > 0.9 * len(ids0)  # ...tokenized differently
    assert metadata["num_examples"]["train"] == len(prepared["train"])
    assert metadata["num_examples"]["validation"] == len(prepared["validation"])
    assert metadata["skipped_contigs"]["train"] + metadata["skipped_contigs"]["validation"] >= 30


def test_train_and_validation_share_no_base(prepared):
    kmer_length = KmerTokenizer(3, 8).ids_to_kmer_lengths

    def bases(examples):
        covered = set()
        for example in examples:
            num = int(example["input_mask"].sum()) - 2
            record, start = int(example["record_index"][0]), int(example["start_offset"][0])
            for offset, k in enumerate(kmer_length(true_ids(example)[1 : num + 1])):
                covered.update((record, start + offset + i) for i in range(int(k)))
        return covered

    train, validation = bases(prepared["train"]), bases(prepared["validation"])
    assert validation and train and not train & validation
    assert {int(e["dupe_index"][0]) for e in prepared["validation"]} == {0}  # validation written once


def test_identical_output_with_one_or_two_workers(prepared):
    one, two = Path(prepared["one"]), Path(prepared["two"])
    shards = sorted(p.name for p in one.iterdir() if "tfrecord" in p.name)
    assert shards == sorted(p.name for p in two.iterdir() if "tfrecord" in p.name)
    assert len([s for s in shards if "-train." in s]) >= 4 and any("-validation." in s for s in shards)
    for name in shards + ["vocab.txt"]:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    meta_one, meta_two = (json.loads((p / "metadata.json").read_text()) for p in (one, two))
    for key in ("num_examples", "num_tokens", "leak", "files", "sources", "records"):
        assert meta_one[key] == meta_two[key]
    assert meta_two["num_workers"] == 2


def test_metadata_and_reuse(prepared, genome):
    path = Path(prepared["one"])
    dataset = load_prepared(path.parents[2])  # the data_dir: found below it
    assert dataset.path == path and load_prepared(path).path == path
    m = dataset.metadata
    assert m["vocab_size"] == 87_365 and (path / "vocab.txt").read_text().count("\n") == 87_365
    assert (m["seq_length"], m["max_predictions"], m["k_min"], m["k_max"], m["seed"]) == (64, 10, 3, 8, 11)
    assert m["mask_strategy"] == "span" and m["mask_span"] == 4 and m["dupe_factor"] == 2
    assert [s["path"] for s in m["sources"]] == list(genome["files"])
    import hashlib

    assert m["sources"][1]["sha256"] == hashlib.sha256(Path(genome["files"][1]).read_bytes()).hexdigest()
    assert 0 < m["leak_figure"] < 1 and m["records_skipped"] == 2
    assert dataset.num_examples("train") == sum(m["shard_lengths"]["train"])
    assert all("tfrecord" in f and "train" in f for f in dataset.files("train"))
    # Same settings again: the complete dataset is returned as it is, nothing rewritten.
    mtimes = {p: p.stat().st_mtime_ns for p in path.iterdir()}
    assert prepare_dataset(prepared["settings"], path.parents[2], progress=False) == path
    assert {p: p.stat().st_mtime_ns for p in path.iterdir()} == mtimes


def test_demo_corpus_tfds_loading_and_leak_by_strategy(tmp_path, chr22_fasta):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from dnavec_jax.data import tf_feature_spec

    tf.config.set_visible_devices([], "GPU")
    token = prepare_dataset(PrepSettings(), tmp_path / "token", progress=False)
    span = prepare_dataset(PrepSettings(mask_strategy="span", mask_span=6), tmp_path / "span", progress=False)
    meta_token, meta_span = load_prepared(token).metadata, load_prepared(span).metadata
    assert meta_token["sources"][0]["path"] == str(chr22_fasta.resolve())
    assert meta_token["records"] == [{"index": 0, "name": "22:20000001-21000000", "length": 1_000_000, "source": 0}]
    assert meta_token["num_examples"]["validation"] > 100  # the 900 kb demo has a validation split
    assert meta_token["leak_figure"] > 0.9 > meta_span["leak_figure"]
    # TFDS reads it back, and the shards parse with tf_feature_spec.
    builder = tfds.builder_from_directory(str(token))
    assert builder.info.splits["validation"].num_examples == meta_token["num_examples"]["validation"]
    assert builder.info.metadata["leak_figure"] == meta_token["leak_figure"]
    example = next(iter(builder.as_dataset(split="train").take(1)))
    assert example["input_ids"].shape == (512,) and example["masked_lm_weights"].dtype == tf.float32
    files = load_prepared(token).files("validation")
    batch = next(iter(tf.data.TFRecordDataset(files).batch(4)))
    parsed = tf.io.parse_example(batch, tf_feature_spec(512, 77))
    assert parsed["input_ids"].shape == (4, 512) and parsed["masked_lm_positions"].shape == (4, 77)
    assert int(tf.reduce_sum(parsed["masked_lm_weights"][0])) == 77


def test_builder_runs_like_tfds_build_with_a_json_config(tmp_path, genome):
    """`tfds build --config '{...}'` builds DnaKmerMlmConfig(**json): relative FASTA from manual_dir."""
    import tensorflow_datasets as tfds

    from dnavec_jax.data.builder import DnaKmerMlm

    config = DnaKmerMlm.builder_config_cls(
        name="custom", settings={"fasta": ["b.fa.gz"], "chromosomes": "all", "seq_length": 32,
                                 "max_predictions": 5, "validation_block_size": 3000})
    builder = DnaKmerMlm(config=config, data_dir=str(tmp_path), num_workers=1, progress=False)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=genome["root"]))
    dataset = load_prepared(tmp_path)
    assert dataset.metadata["records"][0]["name"] == "3" and dataset.num_examples("validation") > 0
    assert [p.name for p in (tmp_path / "dna_kmer_mlm" / "custom").iterdir()] == ["1.0.0"]


def leftovers(data_dir):
    """Anything a later run could mistake for a dataset: complete ones, or files below data_dir."""
    return find_prepared(data_dir), [p for p in Path(data_dir).rglob("*") if p.is_file()]


@pytest.mark.parametrize("case", [
    "missing", "empty", "not_fasta", "binary", "truncated_gz", "no_matching_record", "unwritable",
    "k_min_above_k_max", "k_above_12", "mask_rate_0", "mask_rate_1", "seq_length_2", "unknown_setting",
])
def test_bad_input_one_line_error_and_nothing_left(tmp_path, case):
    data_dir = tmp_path / "out"
    fasta = tmp_path / "in.fa"
    fasta.write_text(">chr1\n" + "ACGT" * 200 + "\n")
    settings = {"fasta": [str(fasta)]}
    expected = str(fasta)
    if case == "missing":
        fasta.unlink()
    elif case == "empty":
        fasta.write_bytes(b"")
    elif case == "not_fasta":
        fasta.write_text("chr1 ACGT\n")
    elif case == "binary":
        fasta.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif case == "truncated_gz":
        fasta = tmp_path / "in.fa.gz"
        dna = np.frombuffer(b"ACGT", np.uint8)[np.random.default_rng(1).integers(0, 4, 200_000)].tobytes()
        fasta.write_bytes(gzip.compress(b">chr1\n" + dna)[:30_000])
        settings, expected = {"fasta": [str(fasta)]}, str(fasta)
    elif case == "no_matching_record":
        fasta.write_text(">chrX\n" + "ACGT" * 200 + "\n")
    elif case == "unwritable":
        blocker = tmp_path / "a_file"
        blocker.write_text("")
        data_dir = blocker / "out"  # below a regular file: cannot be created, even by root
        expected = str(data_dir)
    else:
        expected = {"k_min_above_k_max": "k_min", "k_above_12": "1..12", "mask_rate_0": "mask_rate",
                    "mask_rate_1": "mask_rate", "seq_length_2": "seq_length", "unknown_setting": "colour"}[case]
        settings.update({"k_min_above_k_max": {"k_min": 6, "k_max": 4}, "k_above_12": {"k_max": 13},
                         "mask_rate_0": {"mask_rate": 0.0}, "mask_rate_1": {"mask_rate": 1.0},
                         "seq_length_2": {"seq_length": 2}, "unknown_setting": {"colour": "red"}}[case])
    with pytest.raises(DNAVecError) as error:
        prepare_dataset(PrepSettings.from_dict(settings), data_dir, num_workers=1, progress=False)
    message = str(error.value)
    assert "\n" not in message and expected in message, message
    if Path(data_dir).parent.is_dir():
        assert leftovers(data_dir) == ([], [])
        with pytest.raises(DNAVecError, match="prepare_data.py --data_dir"):
            load_prepared(data_dir)


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
    missing = tmp_path / "nope.fa.gz"
    result = subprocess.run(
        [sys.executable, str(REPO / "data_prep" / "prepare_data.py"), "--fasta", str(missing),
         "--data_dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {missing}: FASTA file not found"]
    assert not (tmp_path / "out").exists() or leftovers(tmp_path / "out") == ([], [])


def test_cli_flags_reach_the_settings(tmp_path):
    prepare_data = data_prep_script("prepare_data")
    listing = tmp_path / "genomes.txt"
    listing.write_text("# more genomes\nmm39.fa.gz\ngs://bucket/danRer11.fa.gz  # zebrafish\n")
    args = prepare_data.build_parser().parse_args(
        ["--data_dir", "d", "--fasta", "a.fa", "--fasta", "b.fa.gz", "--chromosomes", "all", "--seed", "3",
         "--dupe_factor", "2", "--mask_strategy", "span", "--mask_span", "8", "--k_weights", "1,1,1,1,2,2",
         "--soft_masked", "drop", "--mask_rate", "0.2", "--fasta_list", str(listing),
         "--beam_pipeline_options=runner=FnApiRunner,direct_num_workers=4"])
    settings = prepare_data.settings_from_args(args)
    assert settings == PrepSettings(fasta=("a.fa", "b.fa.gz", str(tmp_path / "mm39.fa.gz"), "gs://bucket/danRer11.fa.gz"),
                                    chromosomes="all", seed=3, dupe_factor=2, mask_strategy="span", mask_span=8,
                                    k_weights=(1, 1, 1, 1, 2, 2), soft_masked="drop", mask_rate=0.2)
    assert args.beam_pipeline_options == "runner=FnApiRunner,direct_num_workers=4"


def test_load_prepared_ignores_incomplete_and_explains_how_to_prepare(tmp_path):
    with pytest.raises(DNAVecError, match="does not exist.*prepare_data.py --data_dir"):
        load_prepared(tmp_path / "nothing")
    incomplete = tmp_path / "dna_kmer_mlm" / "cfg" / "1.0.0.incomplete7Q3"
    incomplete.mkdir(parents=True)
    (incomplete / "dataset_info.json").write_text("{}")
    (incomplete / "metadata.json").write_text(json.dumps({"format": "dnavec-kmer-mlm", "files": {}}))
    with pytest.raises(DNAVecError, match="holds no complete prepared dataset"):
        load_prepared(tmp_path)


def test_download_helper_reports_offline_in_one_line(tmp_path):
    from dnavec_jax.data.hg38 import download_hg38

    with pytest.raises(DNAVecError) as error:
        download_hg38(tmp_path, url="http://127.0.0.1:9/hg38.fa.gz", md5sum_url=None, progress=False)
    message = str(error.value)
    assert "\n" not in message and "cannot download" in message and "hg38.fa.gz" in message
    assert not (tmp_path / "hg38.fa.gz").exists()


def test_tfds_build_command_prepares_a_config(tmp_path, genome):
    """data_prep/tfds_build.py runs TFDS's own build command (what `tfds build` runs)."""
    tfds_build = data_prep_script("tfds_build")
    config = json.dumps({"name": "small", "settings": {"fasta": ["b.fa.gz"], "chromosomes": "all",
                                                       "seq_length": 32, "max_predictions": 5}})
    tfds_build.main(["dna_kmer_mlm", "--config", config, "--data_dir", str(tmp_path),
                     "--manual_dir", str(genome["root"])])
    dataset = load_prepared(tmp_path)
    assert dataset.path == tmp_path / "dna_kmer_mlm" / "small" / "1.0.0"
    assert dataset.metadata["seq_length"] == 32 and dataset.num_examples("train") > 0


def test_every_genome_holds_out_validation_blocks(tmp_path):
    """A genome of scaffolds shorter than two blocks gets validation blocks too (the per-record rule holds
    none of them out); genomes the per-record rule serves keep exactly its choice."""
    from dnavec_jax.data.fasta import GenomeRecord
    from dnavec_jax.data.pipeline import hold_out_in_every_genome, record_split

    settings = PrepSettings(validation_fraction=0.1, validation_block_size=1_000, seq_length=64, max_predictions=10,
                            min_contig_length=20, chromosomes="all")
    records = [GenomeRecord(0, "chr1", 10_000, 0)]  # served: 1 of its 10 blocks
    records += [GenomeRecord(1 + i, f"scaffold{i}", 900, 1) for i in range(30)]  # 30 one-block scaffolds
    records += [GenomeRecord(31, "plasmid", 700, 2)]  # a genome of one block: nothing to hold out
    chosen = hold_out_in_every_genome(records, settings)
    assert chosen[0] == records[0] and chosen[31] == records[31]
    held = [r.name for r in chosen if r.held_out_blocks]
    assert len(held) == 3 and all(r.held_out_blocks == (0,) for r in chosen[1:31] if r.held_out_blocks)
    assert hold_out_in_every_genome(records[::-1], settings)[::-1] == chosen  # by hash, not by order
    assert record_split(chosen[1 + int(held[0].removeprefix("scaffold"))], settings).held_out.tolist() == [True]
    # End to end: the fragmented genome has a validation split of its own.
    rng = np.random.default_rng(2)
    assembly = tmp_path / "assembly.fa"
    assembly.write_text("".join(f">scaffold{i}\n{''.join(rng.choice(list('ACGT'), 900))}\n" for i in range(30)))
    path = prepare_dataset(settings.replace(fasta=(str(assembly),)), tmp_path / "out", num_workers=1, progress=False)
    genome = load_prepared(path).metadata["genomes"][0]
    assert genome["name"] == "assembly" and genome["records"] == 30 and genome["bases"] == 27_000
    assert genome["contig_bases"]["validation"] == 3 * 900 and genome["num_examples"]["validation"] > 0
