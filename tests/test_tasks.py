"""The task generators' ground rules and the shuffled-genome control (docs/classify.md): no generator draws
"held-out" DNA without being told the pretraining run, the order task hides its classes from a bag of
k-mers, and scripts/shuffle_genome.py keeps dinucleotide counts exactly while changing the sequence.
"""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import json
from collections import Counter

import numpy as np
import pytest
from conftest import REPO

from dnavec_jax.data.fasta import DEMO_FASTA
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tokenization import BASE_CODES
from dnavec_jax.tools.classify import baseline, held_out, motif, order, tables


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shuffle_genome = _script("shuffle_genome")


# ---- told the pretraining run, or nothing ----

def test_generators_refuse_held_out_dna_without_the_pretraining_run(chr22_fasta, tmp_path, capsys):
    for generate in (motif.planted_motif_task, order.order_task):
        with pytest.raises(DNAVecError, match="held-out DNA is held out from one pretraining run only"):
            generate(chr22_fasta, pretraining=None, num_windows=10)
    with pytest.raises(DNAVecError, match="held out from one pretraining run only"):
        held_out.held_out_windows(chr22_fasta, 150, None)
    for name in ("make_motif_task", "make_order_task"):
        assert _script(name).main(["--output_dir", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: held-out DNA is held out from one pretraining run only") and err.count("\n") == 1
        assert not (tmp_path / name).exists()
    assert _script("make_motif_task").main(["--output_dir", str(tmp_path / "t"), "--pretraining_run",
                                            str(tmp_path)]) == 2
    assert f"--pretraining_run {tmp_path}: no config.json" in capsys.readouterr().err


def test_the_pretraining_run_decides_the_blocks(chr22_fasta, demo_prep, tmp_path):
    """A run's config.json gives its data prep; another validation setting gives other windows."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"data": {"prep": demo_prep.to_dict()}}))
    assert held_out.pretraining_prep(run) == demo_prep == held_out.pretraining_prep(run / "config.json")
    assert held_out.source_fasta(demo_prep) == str(DEMO_FASTA) and held_out.source_fasta(demo_prep, "x.fa") == "x.fa"
    ours = {start for _, start, _ in held_out.held_out_windows(chr22_fasta, 150, demo_prep)}
    other = demo_prep.replace(validation_block_size=10_000)
    theirs = {start for _, start, _ in held_out.held_out_windows(chr22_fasta, 150, other)}
    assert ours and theirs and ours != theirs
    trained = np.concatenate(list(held_out.training_runs(chr22_fasta, demo_prep)))
    assert 800_000 < len(trained) < 900_000  # 1 Mbp less the 100 kb N gap and three 20 kb held-out blocks


# ---- the order task ----

def test_markov_chain_samples_follow_its_six_mer_counts():
    """Text from a strongly order-5 process (each 5-base context prefers one next base): the fitted chain's
    samples reproduce its 6-mer frequencies, which a chain reading the wrong context would not."""
    rng = np.random.default_rng(0)
    preferred = rng.integers(4, size=4 ** 5)
    text = np.zeros(100_000, np.uint8)
    context = 0
    for position in range(len(text)):
        text[position] = preferred[context] if rng.random() < 0.8 else rng.integers(4)
        context = ((context << 2) | int(text[position])) & (4 ** 5 - 1)
    chain = order.MarkovChain.fit([text])
    sample = chain.sample(1_000, 150, rng)
    fitted = np.bincount(order.kmer_codes(text, 6), minlength=4096).astype(float)
    drawn = sum(np.bincount(order.kmer_codes(row, 6), minlength=4096) for row in sample).astype(float)
    assert sample.shape == (1_000, 150) and sample.max() <= 3
    assert np.corrcoef(fitted, drawn)[0, 1] > 0.95


def _kmer_baseline_test_auroc(task, tmp_path, name) -> float:
    paths = motif.write_task(task, tmp_path / name)
    loaded = tables.load_task(paths["train"], paths["dev"], paths["test"])
    return baseline.run_baseline(loaded, (3, 6), False, 0)["test"]["auroc"]


def test_order_task_hides_its_classes_from_a_bag_of_kmers(chr22_fasta, demo_prep, tmp_path, monkeypatch):
    """Label 1: windows the demo run held out; label 0: matched samples of chains fitted on its training blocks.
    The k-mer baseline (k 3..6: bags of up to 6-mers) is near chance on it; with one unmatched chain it is not,
    so the matching is what hides the classes (measured, seed 0, 2026-12-05: 0.52 matched, 0.79 unmatched)."""
    task = order.order_task(chr22_fasta, pretraining=demo_prep, num_windows=300, seed=0)
    assert {split: len(rows) for split, rows in task.items()} == {"train": 420, "dev": 90, "test": 90}
    real = {text for _, _, text in held_out.held_out_windows(chr22_fasta, 150, demo_prep)}
    for rows in task.values():
        ones = [sequence for sequence, label in rows if label == 1]
        zeros = [sequence for sequence, label in rows if label == 0]
        assert len(ones) == len(zeros) and set(ones) <= real and not set(zeros) & real
        counts = np.array([[Counter(s)[b] for b in "ACGT"] for s in ones])
        for sequence in zeros:  # each chain sample has a partner window of nearly its composition
            assert len(sequence) == 150 and (np.abs(counts - [Counter(sequence)[b] for b in "ACGT"]).max(1)
                                             <= order.MATCH_BASES).any()
    assert order.order_task(chr22_fasta, pretraining=demo_prep, num_windows=300, seed=0) == task
    matched = _kmer_baseline_test_auroc(task, tmp_path, "matched")
    monkeypatch.setattr(order, "STRATA", 1)
    monkeypatch.setattr(order, "MATCH_BASES", 150)
    unmatched = _kmer_baseline_test_auroc(order.order_task(chr22_fasta, pretraining=demo_prep, num_windows=300,
                                                           seed=0), tmp_path, "unmatched")
    assert matched < 0.65 < 0.72 < unmatched, (matched, unmatched)


# ---- the shuffled genome ----

def _pairs(codes: np.ndarray) -> np.ndarray:
    """4 x 4 counts of adjacent A/C/G/T pairs (pairs touching another letter are not counted)."""
    valid = (codes[:-1] < 4) & (codes[1:] < 4)
    counts = np.zeros((4, 4), np.int64)
    np.add.at(counts, (codes[:-1][valid], codes[1:][valid]), 1)
    return counts


def test_shuffled_genome_keeps_dinucleotides_exactly_and_changes_the_sequence(chr22_fasta, tmp_path, capsys):
    with gzip.open(chr22_fasta, "rt") as handle:
        text = "".join(line.strip() for line in handle if not line.startswith(">"))
    records = {"one": text[:15_000] + "NNNNRYN" + text[15_000:30_000].lower(), "two": "ACGTTNAC" + text[40_000:41_000]}
    source = tmp_path / "genome.fa"
    source.write_text("".join(f">{name} a description\n{sequence}\n" for name, sequence in records.items()))
    output = tmp_path / "shuffled.fa.gz"
    assert shuffle_genome.main(["--fasta", str(source), "--output", str(output), "--seed", "3"]) == 0
    assert "dinucleotide counts kept" in capsys.readouterr().out
    with gzip.open(output, "rt") as handle:
        lines = handle.read().split(">")[1:]
    shuffled = {chunk.split("\n", 1)[0]: chunk.split("\n", 1)[1].replace("\n", "") for chunk in lines}
    assert list(shuffled) == list(records)
    for name, sequence in records.items():
        before = BASE_CODES[np.frombuffer(sequence.encode(), np.uint8)]
        after = BASE_CODES[np.frombuffer(shuffled[name].encode(), np.uint8)]
        assert len(after) == len(before) and np.array_equal(after == 255, before == 255)  # N and IUPAC in place
        assert np.array_equal(_pairs(after), _pairs(before))  # exactly
        assert [shuffled[name][i] for i in np.flatnonzero(before == 255)] == [
            sequence[i] for i in np.flatnonzero(before == 255)]
    long_before = BASE_CODES[np.frombuffer(records["one"].encode(), np.uint8)]
    long_after = BASE_CODES[np.frombuffer(shuffled["one"].encode(), np.uint8)]
    assert (long_before == long_after).mean() < 0.4  # another sequence: ~0.3 agree by composition alone
    assert shuffled["one"].isupper()
    again = tmp_path / "again.fa.gz"
    assert shuffle_genome.main(["--fasta", str(source), "--output", str(again), "--seed", "3"]) == 0
    assert again.read_bytes() == output.read_bytes()  # deterministic in --seed
    assert shuffle_genome.main(["--fasta", str(source), "--output", str(output)]) == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err


def test_dinucleotide_shuffle_is_uniform_over_sequences_with_the_same_pairs():
    """Every sequence with the same pair counts and first base (hence last base) is equally likely: all 4^8
    sequences enumerated, 6,000 shuffles counted. (Here first = last, so other sequences with the same pairs
    start elsewhere: the shuffle keeps the first base, as Altschul & Erickson's does.)"""
    source = BASE_CODES[np.frombuffer(b"ACAGACTA", np.uint8)]
    same = [seq for seq in itertools.product(range(4), repeat=8)
            if seq[0] == source[0] and np.array_equal(_pairs(np.array(seq, np.uint8)), _pairs(source))]
    rng = np.random.default_rng(0)
    counts = Counter(tuple(shuffle_genome.dinucleotide_shuffle(source, rng)) for _ in range(6_000))
    assert set(counts) == set(same) and len(same) > 5
    expected = 6_000 / len(same)
    chi2 = sum((counts[seq] - expected) ** 2 / expected for seq in same)
    assert chi2 < 3 * len(same), (chi2, len(same))  # df = len(same) - 1; a biased walk is far above
