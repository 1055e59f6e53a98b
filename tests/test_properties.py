"""Property-based tests (hypothesis): the data invariants hold on arbitrary genomes and layouts.

Random sequences mix A/C/G/T runs, soft-masked (lower-case) runs, N runs and
IUPAC letters; FASTA files get random line widths, CRLF or LF line ends, a
final newline or not, gzip or not, and empty records. Invariants:
- reading: a FASTA record reads back as exactly the sequence written (case kept);
- contigs: the maximal A/C/G/T runs, cut at train/validation block edges;
- tokens: every token is the genome at its position, k in k_min..k_max, no N,
  IUPAC letter (or, with soft_masked="drop", lower-case base) inside a token,
  no token crossing a contig end, every eligible position starts exactly one token;
- masking: only k-mer tokens are predicted, never [PAD]/[UNK]/[CLS]/[SEP]/[MASK],
  BERT's prediction count, labels are the original ids, replacements are [MASK],
  a k-mer or the token itself.
Sequence content is drawn from a seeded numpy generator (fast); hypothesis picks
(and shrinks) the seed, the segment kinds and lengths, and every setting.
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnavec_jax.data import fasta
from dnavec_jax.data.masking import Masker
from dnavec_jax.data.pipeline import GenomeWorker, record_split
from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.tokenization import (
    CLS_ID,
    MASK_ID,
    NUM_SPECIAL,
    PAD_ID,
    SEP_ID,
    UNK_ID,
    KmerTokenizer,
    acgt_runs,
    sequence_to_codes,
)

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IUPAC = "RYKMSWBDHVrykmswbdhv"
SEGMENT_KINDS = ("ACGT", "ACGT", "acgt", "ACGTacgt", "N", "n", "IUPAC")


# ---- strategies ----------------------------------------------------------------------

@st.composite
def sequences(draw, max_segments: int = 10, max_run: int = 400) -> str:
    """A DNA string of random segments: upper/lower/mixed-case ACGT, N or n runs, IUPAC letters."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    parts = []
    for kind, length in draw(st.lists(st.tuples(st.sampled_from(SEGMENT_KINDS), st.integers(1, max_run)),
                                      max_size=max_segments)):
        if kind in ("N", "n"):
            parts.append(kind * length)
        else:
            letters = np.frombuffer((IUPAC if kind == "IUPAC" else kind).encode(), np.uint8)
            parts.append(rng.choice(letters, min(length, 3) if kind == "IUPAC" else length).tobytes().decode())
    return "".join(parts)


@st.composite
def fasta_files(draw, max_records: int = 4, max_run: int = 400, max_segments: int = 10):
    """(records, layout): records may be empty; layout = per-record line width, line end, final newline, gzip."""
    count = draw(st.integers(1, max_records))
    records = [(f"r{index}", draw(st.one_of(st.just(""), sequences(max_segments, max_run)))) for index in range(count)]
    layout = {
        "widths": [draw(st.integers(1, 120)) for _ in records],
        "newline": draw(st.sampled_from(["\n", "\r\n"])),
        "final_newline": draw(st.booleans()),
        "gzip": draw(st.booleans()),
    }
    return records, layout


def write_fasta(directory: Path, records, layout) -> Path:
    lines = []
    for (name, sequence), width in zip(records, layout["widths"]):
        lines.append(f">{name} some description")
        lines.extend(sequence[i : i + width] for i in range(0, len(sequence), width))
    newline = layout["newline"]
    data = (newline.join(lines) + (newline if layout["final_newline"] else "")).encode()
    path = directory / ("genome.fa.gz" if layout["gzip"] else "genome.fa")
    path.write_bytes(gzip.compress(data, mtime=0) if layout["gzip"] else data)
    return path


def open_fasta(directory: Path, records, layout):
    path = write_fasta(directory, records, layout)
    source = fasta.open_source(str(path), directory / "work", 0)
    chosen, skipped = fasta.select_records([source], "all")
    return source, chosen, skipped


# ---- FASTA reading ----------------------------------------------------------------------

@PROPERTY
@given(fasta_files())
def test_fasta_reads_back_exactly_whatever_the_layout(case):
    records, layout = case
    with tempfile.TemporaryDirectory() as tmp:
        source, chosen, skipped = open_fasta(Path(tmp), records, layout)
        assert skipped == [] and [(r.name, r.length) for r in chosen] == [(n, len(s)) for n, s in records]
        reader = fasta.RecordReader([source])
        try:
            for record, (_, sequence) in zip(chosen, records):
                assert reader.read(record, 0, record.length).tobytes().decode() == sequence  # case kept
                if record.length > 2:  # a window inside the record, across line ends
                    start, end = record.length // 3, record.length - 1
                    assert reader.read(record, start, end).tobytes().decode() == sequence[start:end]
        finally:
            reader.close()


# ---- contigs and tokens ----------------------------------------------------------------------

def valid_base(letter: str, soft_masked: str = "upper") -> bool:
    return letter in "ACGT" or (soft_masked == "upper" and letter in "acgt")


@PROPERTY
@given(sequences(max_segments=14), st.lists(st.integers(0, 3000), max_size=4))
def test_contigs_are_the_maximal_acgt_runs_cut_at_segment_edges(sequence, cuts):
    cuts = sorted({c for c in cuts if 0 < c < len(sequence)})
    for soft_masked in ("upper", "drop"):
        raw = np.frombuffer(sequence.encode(), np.uint8)
        _, runs = fasta.contig_runs(raw, fasta.base_code_table(soft_masked), np.asarray(cuts, np.int64))
        covered = np.zeros(len(sequence), bool)
        for start, end in runs.tolist():
            assert 0 <= start < end <= len(sequence)
            assert all(valid_base(c, soft_masked) for c in sequence[start:end])
            assert not any(start < cut < end for cut in cuts)  # no contig crosses a segment edge
            # Maximal: a contig ends at the sequence ends, at an invalid letter, or at a cut.
            assert start == 0 or start in cuts or not valid_base(sequence[start - 1], soft_masked)
            assert end == len(sequence) or end in cuts or not valid_base(sequence[end], soft_masked)
            assert not covered[start:end].any()
            covered[start:end] = True
        assert covered.tolist() == [valid_base(c, soft_masked) for c in sequence]


@PROPERTY
@given(sequences(), st.integers(1, 6), st.integers(0, 3), st.integers(0, 2**31 - 1), st.booleans())
def test_every_token_is_the_sequence_at_its_position(sequence, k_min, k_extra, seed, fixed):
    k_max = min(k_min + k_extra, 6)
    tokenizer = KmerTokenizer(k_min, k_max)
    codes = sequence_to_codes(sequence)
    covered = np.zeros(len(sequence), bool)
    for start, end in acgt_runs(codes).tolist():
        covered[start:end] = True
    assert covered.tolist() == [valid_base(c) for c in sequence]  # contigs: exactly the A/C/G/T (any case)
    for start, end in acgt_runs(codes).tolist():
        contig = sequence[start:end]
        k = (k_min + seed % (k_max - k_min + 1)) if fixed else None
        ids = tokenizer.encode(contig, seed=seed, k=k)
        expected = max(0, len(contig) - (k or k_min) + 1)
        assert len(ids) == expected  # one token per position that can start one
        assert ((ids >= NUM_SPECIAL) & (ids < tokenizer.vocab_size)).all()
        lengths = tokenizer.ids_to_kmer_lengths(ids)
        for offset, (token, token_id, length) in enumerate(zip(tokenizer.decode_ids(ids), ids, lengths)):
            assert len(token) == length and k_min <= length <= k_max and (k is None or length == k)
            assert offset + length <= len(contig)  # inside the contig
            assert token == contig[offset : offset + length].upper()  # no N or IUPAC letter can be inside
            assert tokenizer.token_to_id(token) == token_id
    if any(not valid_base(c) for c in sequence) and acgt_runs(codes).size:
        # A sequence with N/IUPAC letters is refused whole, never tokenized across them.
        try:
            tokenizer.encode(sequence, seed=seed)
        except ValueError as error:
            assert "invalid letter" in str(error)
        else:
            raise AssertionError("encoded a sequence with N/IUPAC letters")


# ---- masking ---------------------------------------------------------------------------------

@st.composite
def id_batches(draw):
    """Examples [CLS] k-mers [SEP] [PAD]... with stray [UNK]/[MASK]/[PAD] ids among the k-mers."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows, length = draw(st.integers(1, 6)), draw(st.integers(3, 80))
    vocab = draw(st.sampled_from([NUM_SPECIAL + 4, NUM_SPECIAL + 64, 325, 87_365]))
    ids = rng.integers(NUM_SPECIAL, vocab, size=(rows, length))
    ids[:, 0] = CLS_ID
    for row in range(rows):
        n = int(rng.integers(0, length - 1))  # k-mer tokens in this row (0 allowed)
        ids[row, n + 1] = SEP_ID
        ids[row, n + 2 :] = PAD_ID
        strays = rng.integers(1, n + 1, size=int(rng.integers(0, 3))) if n else []
        ids[row, strays] = rng.choice([UNK_ID, MASK_ID, PAD_ID], size=len(strays))
    return ids, vocab


@PROPERTY
@given(id_batches(), st.floats(0.01, 0.99), st.integers(1, 40), st.sampled_from(["token", "span"]),
       st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_masking_never_touches_specials_and_predicts_the_bert_count(batch, rate, max_predictions, strategy, span,
                                                                     seed):
    ids, vocab = batch
    masker = Masker(vocab, rate, max_predictions, strategy, span)
    masked = masker.mask(ids, np.random.default_rng(seed))
    again = masker.mask(ids, np.random.default_rng(seed))
    assert all(np.array_equal(a, b) for a, b in zip(vars(masked).values(), vars(again).values()))  # seeded

    real = masked.masked_lm_weights > 0
    candidates = (ids >= NUM_SPECIAL).sum(axis=1)
    counts = real.sum(axis=1)
    assert (counts == masker.num_predictions(candidates)).all()
    assert (counts <= np.minimum(max_predictions, candidates)).all()
    assert ((counts >= 1) | (candidates == 0)).all()
    assert masked.masked_lm_weights.dtype == np.float32 and set(np.unique(masked.masked_lm_weights)) <= {0.0, 1.0}
    for row in range(len(ids)):
        n = counts[row]
        assert real[row, :n].all() and not real[row, n:].any()  # real slots first, then padding
        positions = masked.masked_lm_positions[row, :n]
        assert (np.diff(positions) > 0).all()  # ascending, no position twice
        assert (ids[row, positions] >= NUM_SPECIAL).all()  # only k-mers are predicted
        assert (masked.masked_lm_ids[row, :n] == ids[row, positions]).all()  # labels: the original ids
        assert (masked.masked_lm_positions[row, n:] == 0).all() and (masked.masked_lm_ids[row, n:] == 0).all()
        shown = masked.input_ids[row, positions]
        assert ((shown == MASK_ID) | (shown == ids[row, positions]) | (shown >= NUM_SPECIAL)).all()
        assert (shown < vocab).all()
        untouched = np.ones(ids.shape[1], bool)
        untouched[positions] = False
        assert (masked.input_ids[row, untouched] == ids[row, untouched]).all()  # specials included
    assert (masked.input_ids[ids < NUM_SPECIAL] == ids[ids < NUM_SPECIAL]).all()


# ---- the data pipeline end to end on random genomes ---------------------------------------------

@st.composite
def prep_settings(draw) -> dict:
    k_min = draw(st.integers(1, 4))
    k_max = draw(st.integers(k_min, min(k_min + 3, 6)))
    seq_length = draw(st.integers(4, 40))
    return dict(
        chromosomes="all", k_min=k_min, k_max=k_max, seq_length=seq_length,
        max_predictions=draw(st.integers(1, seq_length - 2)), mask_rate=draw(st.floats(0.05, 0.5)),
        mask_strategy=draw(st.sampled_from(["token", "span"])), mask_span=draw(st.integers(1, seq_length - 2)),
        seed=draw(st.integers(0, 2**31 - 1)), soft_masked=draw(st.sampled_from(["upper", "drop"])),
        min_contig_length=draw(st.integers(k_min, k_min + 12)),
        validation_fraction=draw(st.sampled_from([0.0, 0.3, 0.5])),
        validation_block_size=draw(st.integers(30, 600)), chunk_bases=1000, shard_bases=1000,
    )


def eligible_contigs(sequence: str, split, s: PrepSettings) -> list[tuple[int, int]]:
    """Contigs long enough to tokenize, found letter by letter (independently of the vectorised code):
    maximal runs of valid bases inside one train/validation block run."""
    contigs, run_start = [], None
    for position in range(len(sequence) + 1):
        inside = position < len(sequence) and valid_base(sequence[position], s.soft_masked)
        same_split = (run_start is not None and position < len(sequence)
                      and split.held_out[position // s.validation_block_size]
                      == split.held_out[run_start // s.validation_block_size])
        if run_start is not None and not (inside and same_split):
            if position - run_start >= s.min_contig_length:
                contigs.append((run_start, position))
            run_start = None
        if inside and run_start is None:
            run_start = position
    return contigs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fasta_files(max_records=3, max_run=1500, max_segments=16), prep_settings())
def test_prepared_examples_are_the_genome_whatever_the_input(case, values):
    records, layout = case
    with tempfile.TemporaryDirectory() as tmp:
        source, chosen, _ = open_fasta(Path(tmp), records, layout)
        s = PrepSettings(fasta=(source.path,), **values)
        s.validate()
        worker = GenomeWorker(s, [source], chosen, tmp)
        tokenizer, per_example = s.tokenizer(), s.tokens_per_example
        try:
            for record, (_, sequence) in zip(chosen, records):
                split = record_split(record, s)
                contigs = eligible_contigs(sequence, split, s)
                contig_of = {p: (a, b) for a, b in contigs for p in range(a, b - s.k_min + 1)}
                starts: list[int] = []
                for chunk_index in range(-(-record.length // s.chunk_length)):
                    chunk = worker.chunk_examples(record, chunk_index, dupe=0)
                    for row in range(len(chunk.true_ids)):
                        ids, n = chunk.true_ids[row], int(chunk.num_tokens[row])
                        start = int(chunk.start_offset[row])
                        assert 1 <= n <= per_example
                        assert ids[0] == CLS_ID and ids[n + 1] == SEP_ID and (ids[n + 2 :] == PAD_ID).all()
                        # Examples start at contig starts or multiples of seq_length - 2, and never span two
                        # contigs or two such blocks.
                        assert start % per_example == 0 or start == contig_of[start][0]
                        assert start // per_example == (start + n - 1) // per_example
                        assert contig_of.get(start + n - 1) == contig_of[start]
                        validation = bool(chunk.is_validation[row])
                        for offset, kmer in enumerate(tokenizer.decode_ids(ids[1 : n + 1])):
                            position = start + offset
                            bases = sequence[position : position + len(kmer)]
                            assert s.k_min <= len(kmer) <= s.k_max
                            assert bases.upper() == kmer  # the genome at its position
                            assert all(valid_base(c, s.soft_masked) for c in bases)  # no N/IUPAC inside
                            blocks = {split.held_out[p // s.validation_block_size]
                                      for p in range(position, position + len(kmer))}
                            assert blocks == {validation}  # never across the train/validation edge
                            starts.append(position)
                        # Masking of the real example: k-mer positions only, BERT's count, original labels.
                        weights = chunk.masked.masked_lm_weights[row]
                        positions = chunk.masked.masked_lm_positions[row][weights > 0]
                        assert len(positions) == worker.masker.num_predictions(np.array([n]))[0]
                        assert ((positions >= 1) & (positions <= n)).all()
                        assert (chunk.masked.masked_lm_ids[row][weights > 0] == ids[positions]).all()
                        shown = chunk.masked.input_ids[row]
                        assert shown[0] == CLS_ID and shown[n + 1] == SEP_ID and (shown[n + 2 :] == PAD_ID).all()
                assert len(starts) == len(set(starts))  # no token twice
                assert set(starts) == set(contig_of)  # and none lost
        finally:
            worker.reader.close()
