"""The in-memory source (data.source='fasta'): data prep's own examples without shards, TensorFlow or pyfaidx."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TINY_PREP

from dnavec_jax.data import PrepSettings, load_prepared
from dnavec_jax.data.features import BERT_FEATURES
from dnavec_jax.data.memory import build_examples
from dnavec_jax.errors import DNAVecError
from dnavec_jax.training import batches


def test_the_examples_are_those_data_prep_writes(tiny_dataset):
    from dnavec_jax.data.tfrecord import decode_example, read_records

    examples = build_examples(PrepSettings(**TINY_PREP))
    dataset = load_prepared(tiny_dataset)
    for split in ("train", "validation"):
        written = [decode_example(record) for file in dataset.files(split) for record in read_records(file)]
        assert examples.num_examples(split) == len(written) == dataset.num_examples(split) > 0
        for name in BERT_FEATURES:  # the same examples in the same order: shard by shard, row by row
            np.testing.assert_array_equal(examples.splits[split][name], np.stack([w[name] for w in written]),
                                          err_msg=f"{split} {name}")
    for split in ("train", "validation"):  # data prep's statistics too (the overlap leak among them)
        stats = examples.stats[split]
        assert stats["predictions"] == dataset.metadata["num_predictions"][split]
        assert stats["leaked"] / stats["predictions"] == dataset.metadata["leak"][split]
    assert examples.splits["train"]["input_ids"].dtype == np.int32
    assert examples.splits["train"]["masked_lm_weights"].dtype == np.float32


def test_array_batches_do_not_depend_on_the_process_count_and_resume_exactly():
    rows = 23
    examples = {name: np.arange(rows * 3, dtype=np.int32).reshape(rows, 3) for name in batches.FEATURES}
    one = batches.array_train_batches(examples, batches.BatchShape(2, 4, 3, 3), seed=5, process_index=0,
                                      process_count=1)
    two = [batches.array_train_batches(examples, batches.BatchShape(2, 2, 3, 3), seed=5, process_index=p,
                                       process_count=2) for p in range(2)]
    seen = []
    for _ in range(7):  # 2 steps of 8 examples per epoch (7 left over): crosses three epoch boundaries
        batch, position = next(one)
        halves = [next(stream)[0]["input_ids"] for stream in two]
        np.testing.assert_array_equal(batch["input_ids"], np.concatenate(halves, axis=1))
        seen.append((position, batch["input_ids"].copy()))
    assert [position for position, _ in seen] == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2), (3, 1)]
    assert len({tuple(ids[:, :, 0].ravel()) for _, ids in seen[:2]} | set()) == 2
    epoch_rows = np.concatenate([ids[:, :, 0].ravel() for _, ids in seen[:2]]) // 3
    assert len(set(epoch_rows)) == 16  # no example twice within an epoch
    resumed = batches.array_train_batches(examples, batches.BatchShape(2, 4, 3, 3), seed=5, process_index=0,
                                          process_count=1, start=seen[2][0])
    for position, ids in seen[3:]:
        batch, at = next(resumed)
        assert at == position
        np.testing.assert_array_equal(batch["input_ids"], ids)


def test_bad_fasta_and_too_small_data_are_one_line_errors(tmp_path, tiny_config):
    from dnavec_jax.training.settings import RunSettings

    (tmp_path / "bad.fa").write_text("ACGT\n")
    with pytest.raises(DNAVecError, match=r"bad.fa: not a FASTA file"):
        build_examples(PrepSettings(**{**TINY_PREP, "fasta": (str(tmp_path / "bad.fa"),)}))
    (tmp_path / "small.fa").write_text(">chr1\n" + "ACGT" * 50 + "\n")
    tiny_config.data.source = "fasta"
    tiny_config.data.prep.update(fasta=(str(tmp_path / "small.fa"),))
    with pytest.raises(DNAVecError, match=r"small.fa: 4 training examples, fewer than one global batch \(8\)"):
        batches.resolve_data(RunSettings.from_config(tiny_config))


def test_training_on_the_fasta_source_needs_neither_tensorflow_nor_pyfaidx(tmp_path, compile_cache):
    """As on the GPU image: no extras, no pyfaidx. The eval row carries the ceilings and the copy probe."""
    env = {**os.environ, **compile_cache, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "CORE_INSTALL_ALSO_HIDE": "pyfaidx"}
    proc = subprocess.run(
        [sys.executable, "tests/core_install.py", "run_pretrain.py", "--config", "configs/tiny.py", "--workdir",
         str(tmp_path / "run"), "--config.data.source=fasta", "--config.data.prep.validation_fraction=0.05",
         "--config.data.prep.validation_block_size=20000", "--config.train.num_train_steps=3",
         "--config.train.eval_every_steps=0", "--config.train.eval_batch_size=64", "--config.export.hf_dir="],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (evaluation,) = [row for row in rows if row["split"] == "eval"]
    assert evaluation["step"] == 3 and evaluation["examples"] == 970  # the 3 held-out blocks of 20 kb
    assert {"accuracy_ceiling", "loss_floor", "copy_accuracy", "copy_accuracy_ceiling",
            "copy_accuracy_given_k", "accuracy_given_k"} <= set(evaluation)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["source"] == "fasta" and config["data"]["prep"]["k_max"] == 4
