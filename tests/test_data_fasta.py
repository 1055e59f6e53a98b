"""FASTA input: chromosome selection, contig splitting, soft-masking, windows, and bad files."""

import gzip

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
