"""The demo recipe learns: configs/demo.py on the embedded chr22 corpus beats the unigram baseline.

Shortened to 300 steps (the full 1,000-step demo and its figures are in
docs/training.md); preparation of the demo dataset is part of the run.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import REPO, load_config_file

from dnavec_jax.training import loop

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("compile_cache")]

# The validation loss must end at least this far (nats per masked token) below the
# cross-entropy of a unigram model fitted on the training split's masked tokens.
MARGIN_NATS = 0.1


def unigram_baseline(data_dir):
    spec = importlib.util.spec_from_file_location("unigram_baseline", REPO / "scripts" / "unigram_baseline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.baseline(data_dir)


def test_demo_loss_falls_below_the_unigram_baseline(tmp_path):
    config = load_config_file("demo")
    config.data.data_dir = str(tmp_path / "data")
    config.train.update(num_train_steps=300, eval_every_steps=0, checkpoint_every_steps=300, log_every_steps=50)
    result = loop.train_and_evaluate(config, tmp_path / "run")

    baseline = unigram_baseline(config.data.data_dir)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first_train = next(r for r in rows if r["split"] == "train")
    final_eval = result["eval"]
    assert final_eval["masked_tokens"] == baseline["masked_tokens_validation"]
    assert first_train["loss"] > baseline["cross_entropy_validation_given_train"]  # it starts above it
    assert final_eval["loss"] < baseline["cross_entropy_validation_given_train"] - MARGIN_NATS, (final_eval, baseline)
    assert final_eval["accuracy"] > 3 * baseline["majority_accuracy_validation"]
