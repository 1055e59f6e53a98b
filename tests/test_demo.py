"""The demo recipe learns: configs/demo.py on the embedded chr22 corpus beats the unigram baseline and
starts to show the overlap structure on held-out DNA.

Shortened to 300 steps (the full 1,000-step demo and its figures are in
docs/training.md); preparation of the demo dataset is part of the run.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import REPO, load_config_file, train_and_evaluate

from dnavec_jax.data import PrepSettings
from dnavec_jax.tools import loaded_model, structure

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("compile_cache")]

# The validation loss must end at least this far (nats per masked token) below the
# cross-entropy of a unigram model fitted on the training split's masked tokens.
MARGIN_NATS = 0.1
# The structure at 300 steps, held-out: measured 3.37x and 0.035 (the initial model: 1.00x and 0.004).
ATTENTION_300 = 2.0
COPY_GIVEN_K_300 = 0.015


def unigram_baseline(data_dir):
    spec = importlib.util.spec_from_file_location("unigram_baseline", REPO / "scripts" / "unigram_baseline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.baseline(data_dir)


def test_demo_loss_falls_below_the_unigram_baseline(tmp_path):
    config = load_config_file("demo")
    config.data.data_dir = str(tmp_path / "data")
    config.train.update(num_train_steps=300, eval_every_steps=0, checkpoint_every_steps=300, log_every_steps=50)
    result = train_and_evaluate(config, tmp_path / "run")

    baseline = unigram_baseline(config.data.data_dir)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first_train = next(r for r in rows if r["split"] == "train")
    final_eval = result["eval"]
    assert final_eval["masked_tokens"] == baseline["masked_tokens_validation"]
    assert first_train["loss"] > baseline["cross_entropy_validation_given_train"]  # it starts above it
    assert final_eval["loss"] < baseline["cross_entropy_validation_given_train"] - MARGIN_NATS, (final_eval, baseline)
    assert final_eval["accuracy"] > 3 * baseline["majority_accuracy_validation"]
    # Every eval row reads its figures against what the objective allows (k 3..6: 32.5%, 1.248 nats).
    assert final_eval["accuracy_ceiling"] == pytest.approx(0.325)
    assert final_eval["loss_floor"] == pytest.approx(1.2481, abs=1e-3)
    assert final_eval["accuracy"] < final_eval["accuracy_ceiling"] and final_eval["loss"] > final_eval["loss_floor"]

    # The structure already moves above chance at 300 steps (the 1,000-step targets are in docs/training.md).
    loaded = loaded_model.load_model(tmp_path / "run")
    settings = PrepSettings.from_dict(config.data.prep.to_dict())
    report = structure.structure_report(loaded.config, loaded.params, loaded.tokenizer,
                                        structure.validation_examples(settings), settings.max_predictions).summary()
    assert report["attention_max_ratio"] > ATTENTION_300, report
    assert report["copy_accuracy_given_k"] > COPY_GIVEN_K_300, report
