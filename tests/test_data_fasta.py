"""FASTA input: chromosome selection, contig splitting, soft-masking, windows, and bad files."""

import dataclasses
import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from dnavec_jax.data import fasta
from dnavec_jax.data.settings import PrepSettings, parse_chromosome_selection, record_selected
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tokenization import acgt_runs

HG38_LIKE = [
    "chr1", "chr2", "chr10", "chr22", "chrX", "chrY", "chrM", "chr1_KI270706v1_random", "chrUn_GL000195v1",
    "chr6_GL000250v2_alt", "chr1_KN196472v1_fix", "chr22_KI270731v1_random", "chrEBV",
]


def selected(names, selection):
    parsed = parse_chromosome_selection(selection)
    return [name for name in names if record_selected(name, parsed)]


def test_default_selection_is_chr1_to_22_only():
    assert selected(HG38_LIKE, "chr1-22") == ["chr1", "chr2", "chr10", "chr22"]
    assert PrepSettings().chromosomes == "chr1-22"
    # Ensembl/NCBI names and region-suffixed headers are the same chromosomes.
    ensembl = ["1", "2", "22", "X", "MT", "22:20000001-21000000", "GL000195.1", "KI270731.1"]
    assert selected(ensembl, "chr1-22") == ["1", "2", "22", "22:20000001-21000000"]
    assert selected(ensembl, "all") == ensembl
    assert selected(HG38_LIKE, "chrX,chrM,chr1_KI270706v1_random") == ["chrX", "chrM", "chr1_KI270706v1_random"]
    assert selected(ensembl, "chrX, chrM") == ["X", "MT"]
    assert selected(HG38_LIKE, "chr2-3,chrY") == ["chr2", "chrY"]
    for bad in ("", " ", "chr1,,chr2", "chr5-2"):
        with pytest.raises(DNAVecError):
            parse_chromosome_selection(bad)
    assert PrepSettings.from_dict({"chromosomes": ["chr1", "chr2"]}).chromosomes == "chr1,chr2"


def write_fasta(path, records, width=60, compress=False):
    lines = []
    for name, sequence in records:
        lines.append(f">{name} some description")
        if width:
            lines.extend(sequence[i : i + width] for i in range(0, len(sequence), width))
        else:
            lines.append(sequence)
    data = ("\n".join(lines) + "\n").encode()
    if compress:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def random_dna(rng, length, alphabet="ACGT"):
    return "".join(rng.choice(list(alphabet), length))


@pytest.mark.parametrize("width,compress", [(7, False), (0, False), (60, True), (80, True)])
def test_windows_read_any_line_width_and_compression(tmp_path, width, compress):
    rng = np.random.default_rng(0)
    records = [("chr1", random_dna(rng, 5000, "ACGTacgtN")), ("chr2", random_dna(rng, 1234))]
    path = write_fasta(tmp_path / ("in.fa.gz" if compress else "in.fa"), records, width, compress)
    source = fasta.open_source(str(path), tmp_path / "work", 0)
    assert source.gzipped == compress
    chosen, skipped = fasta.select_records([source], "all")
    assert [(r.name, r.length) for r in chosen] == [("chr1", 5000), ("chr2", 1234)] and skipped == []
    reader = fasta.RecordReader([source])
    for record, (_, sequence) in zip(chosen, records):
        for start, end in [(0, record.length), (0, 1), (13, 977), (record.length - 5, record.length)]:
            assert reader.read(record, start, end).tobytes().decode() == sequence[start:end]  # case kept
    reader.close()
    assert not (path.parent / (path.name + ".fai")).exists()  # the index lives in the work dir


def test_contigs_split_at_n_iupac_and_optionally_soft_masked_bases():
    raw = np.frombuffer(b"ACGTNNNNacgtRYACGTTTTGGGsACG", np.uint8)
    _, runs = fasta.contig_runs(raw, fasta.base_code_table("upper"))
    assert runs.tolist() == [[0, 4], [8, 12], [14, 24], [25, 28]]
    _, runs = fasta.contig_runs(raw, fasta.base_code_table("drop"))
    assert runs.tolist() == [[0, 4], [14, 24], [25, 28]]
    # Segment edges (train/validation) cut runs like an N would, without losing a base.
    _, runs = fasta.contig_runs(raw, fasta.base_code_table("upper"), np.array([2, 16, 20]))
    assert runs.tolist() == [[0, 2], [2, 4], [8, 12], [14, 16], [16, 20], [20, 24], [25, 28]]
    assert acgt_runs(fasta.base_code_table("upper")[raw]).tolist()[0] == [0, 4]


def one_line(error):
    message = str(error.value)
    assert "\n" not in message
    return message


def test_bad_inputs_raise_one_line_errors_naming_the_file(tmp_path):
    work = tmp_path / "work"
    cases = {}
    cases["missing.fa"] = (None, "not found")
    cases["empty.fa"] = (b"", "empty file")
    cases["notfasta.txt"] = (b"hello\nworld\n", "not a FASTA file")
    cases["binary.bin"] = (bytes(range(256)) * 10, "binary content")
    good = gzip.compress(b">chr1\n" + b"ACGT" * 20000 + b"\n")
    cases["truncated.fa.gz"] = (good[: len(good) // 2], "truncated gzip")
    cases["corrupt.fa.gz"] = (good[:20] + b"\xff" * 200 + good[220:], "gzip")
    cases["gzbinary.fa.gz"] = (gzip.compress(bytes(range(256)) * 4), "binary content")
    cases["emptygz.fa.gz"] = (gzip.compress(b""), "empty file")
    cases["widths.fa"] = (b">chr1\nACGTACGT\nACG\nACGTACGT\nAC\n", "not a valid FASTA")
    cases["dupes.fa"] = (b">chr1\nACGT\n>chr1\nACGT\n", "unique")
    for index, (name, (content, expected)) in enumerate(cases.items()):
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(DNAVecError) as error:
            fasta.open_source(str(path), work, index)
        message = one_line(error)
        assert str(path) in message and expected in message, message
    with pytest.raises(DNAVecError) as error:
        fasta.open_source(str(tmp_path), work, 99)
    assert "directory" in one_line(error)


def test_no_record_matching_the_selection(tmp_path):
    path = write_fasta(tmp_path / "x.fa", [("chrX", "ACGT" * 50), ("chrUn_1", "ACGT" * 50)])
    source = fasta.open_source(str(path), tmp_path / "work", 0)
    with pytest.raises(DNAVecError) as error:
        fasta.select_records([source], "chr1-22")
    message = one_line(error)
    assert str(path) in message and "no record matches" in message and "chrX" in message


def test_fasta_list_and_genome_names(tmp_path):
    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "genomes.txt"
    listing.write_text("# two local genomes and one in a bucket\n\nhuman/hg38.fa.gz\n  /data/mm39.fa  # mouse\n"
                       "gs://bucket/GCF_000001635.27_genomic.fna.gz\n")
    assert fasta.read_fasta_list(str(listing)) == [
        str(tmp_path / "lists" / "human" / "hg38.fa.gz"), "/data/mm39.fa", "gs://bucket/GCF_000001635.27_genomic.fna.gz"]
    listing.write_text("# nothing\n")
    for path, problem in [(listing, "names no file"), (tmp_path / "missing.txt", "cannot read the FASTA list")]:
        with pytest.raises(DNAVecError) as error:
            fasta.read_fasta_list(str(path))
        assert str(path) in one_line(error) and problem in one_line(error)
    names = {"/g/hg38.fa.gz": "hg38", "gs://b/GCF_000001635.27_genomic.fna.gz": "GCF_000001635.27_genomic",
             "x/Homo_sapiens.GRCh38.dna.toplevel.fa": "Homo_sapiens.GRCh38.dna.toplevel", "reads.fastq": "reads.fastq",
             "chr1.fasta": "chr1"}
    assert {path: fasta.genome_name(path) for path in names} == names


def test_remote_sources_are_copied_to_a_local_disk_within_a_budget(tmp_path, monkeypatch):
    """A gs:// input is copied into the work dir before pyfaidx reads it; a source whose uncompressed copy was
    staged in a bucket is copied to the reader's local disk, at most local_copy_bytes of them kept."""
    from fake_bucket import fake_gcs

    rng = np.random.default_rng(3)
    sequences = [random_dna(rng, 3_000), random_dna(rng, 2_000), random_dna(rng, 1_000)]
    (tmp_path / "bucket").mkdir()
    for index, sequence in enumerate(sequences):
        write_fasta(tmp_path / "bucket" / f"g{index}.fa.gz", [(f"chr{index}", sequence)], compress=index == 0)
    with fake_gcs(tmp_path, monkeypatch):
        work = tmp_path / "work"
        sources = [fasta.open_source(f"gs://bucket/g{index}.fa.gz", work, index) for index in range(3)]
        assert [s.path for s in sources] == [f"gs://bucket/g{index}.fa.gz" for index in range(3)]
        assert [s.gzipped for s in sources] == [True, False, False] and not list(work.glob("*.download"))
        assert sources[1].sha256 == hashlib.sha256((tmp_path / "bucket" / "g1.fa.gz").read_bytes()).hexdigest()
        # Stage the uncompressed copies and indexes in the bucket, as the Beam per-file stage does.
        staged = []
        for source in sources:
            for path in (source.plain_path, source.index_path):
                shutil.copy(path, tmp_path / "bucket" / Path(path).name)
            staged.append(dataclasses.replace(source, plain_path=f"gs://bucket/{Path(source.plain_path).name}",
                                              index_path=f"gs://bucket/{Path(source.index_path).name}"))
        shutil.rmtree(work)
        records = [fasta.GenomeRecord(index, f"chr{index}", len(s), index) for index, s in enumerate(sequences)]
        reader = fasta.RecordReader(staged, local_copy_bytes=4_500)  # room for g0 + g2, not g0 + g1
        for record, sequence in zip(records + records[:1], sequences + sequences[:1]):
            assert reader.read(record, 10, 700).tobytes().decode() == sequence[10:700]
        assert reader.local_copies == [2, 0]  # g0 made way for g1, then g1 (least recently used) for g0
        local_dir = Path(reader._local_dir)
        reader.close()
        assert not local_dir.exists()
    with pytest.raises(DNAVecError, match="unsupported URL scheme https://.*download it first"):
        fasta.check_fasta_paths(["https://hgdownload.soe.ucsc.edu/goldenPath/hg38/bigZips/hg38.fa.gz"])
