"""`dnavec classify` (dnavec_jax/tools/classify/): reading tables, the three methods on a planted-motif task
cut from the embedded chr22, repeatability, window pooling and the one-line errors.

The model is the session's trained_workdir: configs/tiny.py (2 layers, hidden 32, k 3..4, 62 k-mer
tokens a window) after 40 MLM steps.
"""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pytest

from dnavec_jax import cli
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tools import embed, loaded_model
from dnavec_jax.tools.classify import baseline, command, finetuning, held_out, metrics, motif, probes, report, tables
from dnavec_jax.tools.classify.settings import ClassifySettings

# Fine-tuning settings for the tiny model (hidden 32): a larger learning rate than the default 3e-4, and
# no early stopping: on the planted motif against its shuffled letters it sat at chance for 20 epochs
# before dev MCC rose (0.35 at epoch 21, 0.64 at epoch 40).
TINY_FINETUNE = dict(learning_rate=3e-3, epochs=40, patience=40, batch_size=16)


@pytest.fixture(scope="module")
def motif_task(chr22_fasta, demo_prep, tmp_path_factory):
    """300 windows of 150 bp -> 420 / 90 / 90 rows, half of them with the CTCF core written in."""
    task = motif.planted_motif_task(chr22_fasta, pretraining=demo_prep, num_windows=300, length=150, seed=0)
    return task, motif.write_task(task, tmp_path_factory.mktemp("motif"))


@pytest.fixture(scope="module")
def loaded(trained_workdir):
    return loaded_model.load_model(trained_workdir)


def _classify_cli(model, paths, output_dir, *extra):
    return cli.main(["classify", "--model", str(model), "--train", str(paths["train"]), "--dev", str(paths["dev"]),
                     "--test", str(paths["test"]), "--output_dir", str(output_dir), *extra])


def _numbers(results: dict) -> dict:
    """results.json's methods without the timings."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith("time_s")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(results["methods"])


def test_planted_motif_task(motif_task, chr22_fasta, demo_prep):
    task, paths = motif_task
    assert {split: len(rows) for split, rows in task.items()} == {"train": 420, "dev": 90, "test": 90}
    pattern = re.compile(motif.CTCF_CORE.replace("N", "[ACGT]"))
    negatives = {}
    for split, rows in task.items():
        assert [label for _, label in rows].count(1) == len(rows) // 2  # balanced
        assert all(len(sequence) == 150 and set(sequence) <= set("ACGT") for sequence, _ in rows)
        assert all(bool(pattern.search(sequence)) == bool(label) for sequence, label in rows)
        negatives[split] = {sequence for sequence, label in rows if label == 0}
        windows = np.array([list(sequence.encode()) for sequence in sorted(negatives[split])], np.uint8)
        for sequence, label in rows:
            if label == 1:  # one negative is the same window: they differ only where the motif was written
                differ = windows != np.frombuffer(sequence.encode(), np.uint8)
                start = pattern.search(sequence).start()
                assert (~differ[:, :start].any(1) & ~differ[:, start + 14:].any(1)).sum() == 1
    assert not (negatives["train"] & negatives["test"]) and not (negatives["train"] & negatives["dev"])
    assert motif.planted_motif_task(chr22_fasta, pretraining=demo_prep, num_windows=300, length=150,
                                    seed=0) == task
    assert tables.read_split(paths["dev"], "dev").sequences == [s for s, _ in task["dev"]]


def test_motif_windows_come_from_the_demo_models_validation_blocks(chr22_fasta, demo_prep):
    """The control's DNA is held out from pretraining: every window lies inside one validation block of the run
    the generator was told (here configs/demo.py's data prep)."""
    from dnavec_jax.data.pipeline import validation_blocks

    fraction, block_size = demo_prep.validation_fraction, demo_prep.validation_block_size
    windows = held_out.held_out_windows(chr22_fasta, 150, demo_prep)
    with gzip.open(chr22_fasta, "rt") as handle:
        text = "".join(line.strip() for line in handle if not line.startswith(">"))
    blocks = validation_blocks("22:20000001-21000000", len(text), fraction, block_size)
    assert len(windows) > 300
    for name, start, window in windows:
        assert name == "22:20000001-21000000" and window == text[start:start + 150]
        assert blocks[start // block_size] and start // block_size == (start + 149) // block_size


def test_both_motif_classes_are_edited_at_the_same_site(motif_task, chr22_fasta, demo_prep):
    """Neither class is pretraining text: label 0 carries the site's letters shuffled, label 1 the motif."""
    task, _ = motif_task
    sources = {}
    for _, _, window in held_out.held_out_windows(chr22_fasta, 150, demo_prep):
        sources[window[:20]] = sources[window[-20:]] = window  # the 14-base site leaves one end untouched
    pairs = {}
    for rows in task.values():
        for sequence, label in rows:
            source = sources.get(sequence[:20]) or sources[sequence[-20:]]
            differ = np.flatnonzero(np.frombuffer(sequence.encode(), np.uint8)
                                    != np.frombuffer(source.encode(), np.uint8))
            assert len(differ) and differ[-1] - differ[0] < 14, (label, differ)  # edited, in one 14-base site
            pairs.setdefault(source, {})[label] = sequence
    assert len(pairs) == 300 and all(set(pair) == {0, 1} for pair in pairs.values())
    pattern = re.compile(motif.CTCF_CORE.replace("N", "[ACGT]"))
    for pair in pairs.values():
        at = pattern.search(pair[1]).start()
        assert pair[0][:at] == pair[1][:at] and pair[0][at + 14:] == pair[1][at + 14:]
        assert sorted(pair[0][at:at + 14]) == sorted(pair[1][at:at + 14])  # same letters, another order


def test_motif_task_errors_name_the_held_out_shortfall(chr22_fasta, demo_prep):
    with pytest.raises(DNAVecError, match="only .* windows of 150 A/C/G/T bases in the validation blocks"):
        motif.planted_motif_task(chr22_fasta, pretraining=demo_prep, num_windows=1000, length=150)


def test_finetuning_and_probes_beat_chance_on_the_planted_motif(loaded, motif_task, capsys):
    """The done-when test. Chance is 0.5 accuracy / 0.0 MCC / 0.5 AUROC on these balanced splits.

    Both classes carry the same 14 letters at the same place (the motif, or its letters shuffled), in
    windows pretraining held out, so only the order of the letters tells them apart. Measured on the
    2-core CPU (seed 0, 2026-12-01): k-mer baseline 0.856 test accuracy (AUROC 0.925); fine-tuning
    0.800 (MCC 0.600, AUROC 0.855) after 40 epochs; token probes 0.756 (static_tokens, AUROC 0.858)
    and 0.678 (tokens, AUROC 0.756); mean-pooled probes 0.59-0.66 (AUROC 0.67-0.70), diluted by the
    mean over ~148 tokens (docs/classify.md). One draw of 90 test rows moves by about ±0.05 in
    accuracy, so the bounds sit well below these values: the test asserts that each method learns
    something, not how much.
    """
    paths = motif_task[1]
    task = tables.load_task(paths["train"], paths["dev"], paths["test"])
    settings = finetuning.FinetuneSettings(**TINY_FINETUNE, seed=0)
    results = command.run_methods(task, loaded, ClassifySettings(seed=0, finetune=settings), log=print)
    print(report.format_table(results))  # shown when an assertion below fails
    assert list(results) == ["baseline", *(f"probe_{f}" for f in probes.PROBE_FEATURES), "finetune"]
    for name, result in results.items():
        assert set(result["dev"]) == set(result["test"]) == set(metrics.METRICS), name
    finetuned = results["finetune"]["test"]
    assert finetuned["accuracy"] >= 0.7 and finetuned["mcc"] >= 0.4 and finetuned["auroc"] >= 0.75, finetuned
    assert results["baseline"]["test"]["accuracy"] >= 0.75
    for feature in probes.TOKEN_FEATURES:  # above chance: MCC 0.2 or more
        probed = results[f"probe_{feature}"]["test"]
        assert probed["accuracy"] >= 0.6 and probed["mcc"] >= 0.2 and probed["auroc"] >= 0.65, (feature, probed)
    best_probe = max((results[f"probe_{f}"]["test"] for f in probes.TOKEN_FEATURES), key=lambda m: m["auroc"])
    assert best_probe["auroc"] >= 0.8 and best_probe["accuracy"] >= 0.7, best_probe
    for feature in ("static", "cls", "mean"):  # above chance, diluted by the mean (see the docstring)
        assert results[f"probe_{feature}"]["test"]["auroc"] > 0.58
    selected = results["finetune"]["selected"]
    assert selected["windows_per_sequence"] == 3 and selected["window_length"] == 64  # 148 tokens: 3 windows
    # Selection batches whole sequences, the reported figures go window by window (classifier.Predictor): same math.
    assert selected["history"][selected["epoch"] - 1]["dev_mcc"] == pytest.approx(results["finetune"]["dev"]["mcc"])
    table = report.format_table(results)
    print(table)
    assert len(table.splitlines()) == 2 + 7 and "| fine-tune (epoch " in table
    assert "probe: tokens + linear, log-sum-exp over tokens" in table


def test_cli_end_to_end_and_same_seed_same_numbers(trained_workdir, trained_export, chr22_fasta, demo_prep, tmp_path,
                                                    capsys):
    paths = motif.write_task(motif.planted_motif_task(chr22_fasta, pretraining=demo_prep, num_windows=40, length=150,
                                                      seed=1), tmp_path / "task")
    quick = ["--epochs", "2", "--batch_size", "8", "--learning_rate", "3e-3", "--probe_epochs", "5", "--seed", "5"]
    assert _classify_cli(trained_workdir, paths, tmp_path / "a", *quick) == 0
    out = capsys.readouterr().out
    assert "| method | dev acc | dev F1 | dev MCC | dev AUROC | test acc" in out and "wrote " in out
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    assert list(first["methods"]) == ["baseline", *(f"probe_{f}" for f in probes.PROBE_FEATURES), "finetune"]
    assert first["task"]["classes"] == ["0", "1"] and first["task"]["splits"]["train"]["examples"] == 56
    assert first["settings"]["seed"] == 5 and first["model"].endswith("(step 40)")
    # The same command again: the same numbers.
    assert _classify_cli(trained_workdir, paths, tmp_path / "b", *quick) == 0
    assert _numbers(json.loads((tmp_path / "b" / "results.json").read_text())) == _numbers(first)
    # The export gives the same model, hence the same numbers (to float noise).
    assert _classify_cli(trained_export, paths, tmp_path / "c", *quick, "--methods", "probe") == 0
    export = json.loads((tmp_path / "c" / "results.json").read_text())["methods"]
    for feature in probes.PROBE_FEATURES:
        assert export[f"probe_{feature}"]["test"] == pytest.approx(first["methods"][f"probe_{feature}"]["test"],
                                                                    abs=0.02)
    # Another seed: other tokenizations, order and dropout.
    capsys.readouterr()
    assert _classify_cli(trained_workdir, paths, tmp_path / "a", *quick[:-1], "6", "--methods", "finetune") == 2
    assert "results.json exists (pass --overwrite" in capsys.readouterr().err
    assert _classify_cli(trained_workdir, paths, tmp_path / "a", *quick[:-1], "6", "--methods", "finetune",
                         "--overwrite", "--random_init_control") == 0
    assert re.search(r"\| fine-tune \(epoch \d\), random init \|", capsys.readouterr().out)
    other = json.loads((tmp_path / "a" / "results.json").read_text())
    assert list(other["methods"]) == ["finetune", "random_init_finetune"] and other["settings"]["random_init_control"]
    assert other["methods"]["finetune"]["selected"]["history"] != first["methods"]["finetune"]["selected"]["history"]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_training_model_computes_what_the_predictor_and_export_compute(loaded, chr22_fasta, pooling):
    """SequenceClassifier (fine-tuning, batches of whole sequences with padding windows) = classifier.Predictor
    (window by window: the pooler on the k-mer mean or [CLS], the head, then the mean of the window logits)."""
    import jax
    import jax.numpy as jnp

    from dnavec_jax.tools.classify import classifier as classifier_lib

    sequences = [_chr22(chr22_fasta)[3000:3300], _chr22(chr22_fasta)[8000:8100] + "N" * 20
                 + _chr22(chr22_fasta)[9000:9070]]
    names = ["long", "gapped"]
    windows = finetuning._window_ids(loaded, sequences, names, seed=3, tokenization=0)
    assert [len(w) for w in windows] == [5, 4]  # 298 tokens: 5 windows; contigs of 98 and 68 tokens: 2 + 2
    ids, mask = finetuning._pack(windows, rows=4, windows=6, length=64)  # padded rows and window slots
    model = finetuning.SequenceClassifier(loaded.config, 3, pooling)
    params = model.init(jax.random.key(0), jnp.asarray(ids), jnp.asarray(mask))["params"]
    params["bert"] = {name: loaded.params[name] for name in params["bert"]}
    params["classifier"] = jax.tree.map(lambda x: np.asarray(x) + 0.3 * np.random.default_rng(1).normal(size=x.shape),
                                        params["classifier"])
    logits = np.asarray(model.apply({"params": params}, ids, mask))[:2]
    classifier = classifier_lib.Classifier(loaded, np.asarray(params["classifier"]["kernel"], np.float32),
                                    np.asarray(params["classifier"]["bias"], np.float32), ("a", "b", "c"), seed=3,
                                    pooling=pooling)
    probs = classifier_lib.Predictor(classifier).probabilities(zip(names, sequences), 2)
    np.testing.assert_allclose(probs, jax.nn.softmax(logits), atol=1e-5)
    assert np.ptp(probs, axis=1).min() > 0.05  # the head matters: not a uniform distribution


def test_token_probe_finds_one_marker_token_that_a_mean_dilutes():
    """Positives differ from negatives in ONE of 120 token vectors: the log-sum-exp pool finds it, the mean does not."""
    rng = np.random.default_rng(0)
    features, labels = {}, {}
    for split, count in (("train", 200), ("dev", 60), ("test", 60)):
        lengths = rng.integers(80, 121, size=count)
        vectors = rng.normal(size=(lengths.sum(), 8)).astype(np.float32)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        labels[split] = np.tile([0, 1], count // 2)
        for row in np.flatnonzero(labels[split]):
            vectors[offsets[row] + rng.integers(lengths[row]), :2] = 4.0  # the marker: far out in 2 dimensions
        features[split] = probes.TokenFeatures(vectors, offsets)
    settings = probes.TokenProbeSettings(epochs=40, patience=40, batch_size=32)
    result = probes.token_probe(features, labels, 2, settings, seed=0)
    assert result["test"]["accuracy"] >= 0.95 and result["test"]["auroc"] >= 0.98, result["test"]
    assert result["selected"]["max_tokens"] == 120 and len(result["selected"]["history"]) == 40
    assert probes.token_probe(features, labels, 2, settings, seed=0)["test"] == result["test"]  # repeatable
    means = {split: np.add.reduceat(f.values, f.offsets[:-1]) / np.diff(f.offsets)[:, None]
             for split, f in features.items()}
    pooled = baseline.logistic_regression(means, labels, seed=0)["test"]
    assert pooled["accuracy"] < 0.8, pooled  # the control: the same data, mean-pooled, is near chance


def test_static_tokens_are_the_static_probes_vectors(loaded, chr22_fasta, demo_prep, tmp_path, capsys):
    """static = the mean of static_tokens over a sequence: both read the tokenization embed uses. The token
    features are spilled to disk as they come (SpilledRows), with a progress bar."""
    paths = motif.write_task(motif.planted_motif_task(chr22_fasta, pretraining=demo_prep, num_windows=20, length=150,
                                                      seed=2), tmp_path / "task")
    task = tables.load_task(paths["train"], paths["dev"], paths["test"])
    features = probes.probe_features(loaded, task, seed=4, features=("static", "static_tokens", "tokens"),
                                       num_tokenizations=2, progress=True)
    assert "features train: 100%" in capsys.readouterr().err
    for split in tables.SPLITS:
        tokens = features["static_tokens"][split]
        vectors = tokens.rows(0, int(tokens.offsets[-1]))
        np.testing.assert_allclose(np.add.reduceat(vectors, tokens.offsets[:-1]) / np.diff(tokens.offsets)[:, None],
                                   features["static"][split], atol=1e-6)
        assert tokens.values.dtype == np.int32 and features["tokens"][split].values.dtype == np.float16  # compact
        assert isinstance(tokens.values, probes.SpilledRows) and isinstance(features["tokens"][split].values,
                                                                             probes.SpilledRows)
        assert np.array_equal(features["tokens"][split].offsets, tokens.offsets)
        assert tokens.offsets[-1] == 2 * 148 * len(task.sequences(split))  # 150 bases, k_min 3, two tokenizations
    reference = embed.embed_sequences(loaded, task.sequences("dev"), seed=4, num_tokenizations=2, per_token=True,
                                          k="random")
    stored = features["tokens"]["dev"]
    np.testing.assert_array_equal(stored.offsets, reference["token_offsets"])
    np.testing.assert_allclose(stored.rows(0, int(stored.offsets[-1])), reference["token_vectors"], rtol=1e-3,
                               atol=1e-3)  # float16


def test_probe_features_hold_no_token_features_in_memory(loaded, chr22_fasta, demo_prep, tmp_path):
    """The token features of a split go to disk as each record is embedded: the peak of numpy allocations
    (tracemalloc sees numpy's; JAX's device buffers are apart) stays a fraction of what they weigh, and it is
    about the same for a task 4x as large. Reading back gives what was written."""
    import tracemalloc

    peaks, sizes = [], []
    for windows in (20, 80):
        paths = motif.write_task(motif.planted_motif_task(chr22_fasta, pretraining=demo_prep, num_windows=windows,
                                                          length=300, seed=2), tmp_path / f"task{windows}")
        task = tables.load_task(paths["train"], paths["dev"], paths["test"])
        probes.probe_features(loaded, task, seed=1, features=("tokens",), num_tokenizations=4)  # compiled
        tracemalloc.start()
        features = probes.probe_features(loaded, task, seed=1, features=("tokens", "static_tokens"),
                                         num_tokenizations=4)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        sizes.append(sum(features[name][split].values.nbytes for name in ("tokens", "static_tokens")
                         for split in tables.SPLITS))
    assert sizes[1] > 3.5 * sizes[0] and sizes[1] > 1e7, sizes
    assert peaks[1] < 0.25 * sizes[1] and peaks[1] < 1.25 * peaks[0], (peaks, sizes)
    spilled = probes.SpilledRows(np.float16, (3,))
    rows = np.arange(30, dtype=np.float16).reshape(10, 3)
    spilled.append(rows[:4])
    spilled.append(rows[4:])
    np.testing.assert_array_equal(spilled[2:7], rows[2:7])
    assert spilled.shape == (10, 3) and spilled[8:20].shape == (2, 3)


def test_random_init_control_is_the_untrained_model(loaded, chr22_fasta, demo_prep, tmp_path):
    """The control rows run on model.init_params(config, key(seed)): same shapes, not the pretrained weights."""
    import jax

    from dnavec_jax.model import init_params

    control = finetuning.random_init_model(loaded, seed=3)
    assert jax.tree.structure(control.params) == jax.tree.structure(loaded.params)
    expected = init_params(loaded.config, jax.random.key(3))
    for got, want, pretrained in zip(jax.tree.leaves(control.params), jax.tree.leaves(expected),
                                     jax.tree.leaves(loaded.params)):
        assert got.shape == pretrained.shape
        np.testing.assert_array_equal(got, want)
    assert not np.allclose(control.params["embeddings"]["word_embeddings"]["embedding"],
                           loaded.params["embeddings"]["word_embeddings"]["embedding"])
    assert control.source.startswith("random init (seed 3) of run ") and control.tokenizer is loaded.tokenizer
    paths = motif.write_task(motif.planted_motif_task(chr22_fasta, pretraining=demo_prep, num_windows=20, length=150,
                                                      seed=2), tmp_path / "task")
    task = tables.load_task(paths["train"], paths["dev"], paths["test"])
    results = command.run_methods(task, loaded, ClassifySettings(
        methods=("probe",), probe_features=("mean", "tokens"), seed=3, random_init_control=True,
        token_probe=probes.TokenProbeSettings(epochs=2)))
    assert list(results) == ["probe_mean", "probe_tokens", "random_init_probe_mean", "random_init_probe_tokens"]
    assert "| probe: tokens + linear, log-sum-exp over tokens, random init |" in report.format_table(results)


def test_random_init_twin_is_the_same_from_a_run_and_from_its_export(tiny_config, tmp_path):
    """A model trained with word_init=bases, sinusoidal positions and no dropout: its twin starts from those
    inits and that dropout whether --model is the run directory or its export (dnavec.json's "model"); an export
    that does not record the init settings gets BERT's (normal) and says so."""
    import jax
    from conftest import train_and_evaluate

    from dnavec_jax import export
    from dnavec_jax.model import BertConfig, init_params

    tiny_config.model.update(word_init="bases", position_init="sinusoidal", hidden_dropout_rate=0.0)
    tiny_config.train.update(num_train_steps=1, warmup_steps=0, eval_every_steps=0, checkpoint_every_steps=1)
    tiny_config.data.synthetic_eval_examples = 0  # no evaluation to compile
    train_and_evaluate(tiny_config, tmp_path / "run")
    exported, _ = export.export_checkpoint(tmp_path / "run", tmp_path / "hf")
    from_run, from_export = loaded_model.load_model(tmp_path / "run"), loaded_model.load_model(exported)
    twins = [finetuning.random_init_model(loaded, seed=3) for loaded in (from_run, from_export)]
    for twin in twins:
        assert (twin.config.word_init, twin.config.position_init, twin.config.hidden_dropout_rate) == (
            "bases", "sinusoidal", 0.0)
    for a, b in zip(jax.tree.leaves(twins[0].params), jax.tree.leaves(twins[1].params)):
        np.testing.assert_array_equal(a, b)
    assert finetuning.twin_settings(from_export)["init_settings_from"] == "dnavec.json"
    plain = init_params(BertConfig(**{**from_run.config.to_dict(), "word_init": "normal",
                                      "position_init": "normal"}), jax.random.key(3))
    assert not np.allclose(plain["embeddings"]["word_embeddings"]["embedding"],
                           twins[0].params["embeddings"]["word_embeddings"]["embedding"])
    # An export written before the init settings were recorded: BERT's default, named as such.
    info = json.loads((exported / export.DNAVEC_FILE).read_text())
    for name in loaded_model.INIT_FIELDS:
        del info["model"][name]
    (exported / export.DNAVEC_FILE).write_text(json.dumps(info))
    old = loaded_model.load_model(exported)
    assert (old.config.word_init, old.config.position_init) == ("normal", "normal")
    assert finetuning.twin_settings(old)["init_settings_from"] == (
        "dnavec.json (not recorded, BERT's default: position_init, word_init)")


def _chr22(path) -> str:
    import gzip

    return "".join(gzip.open(path, "rt").read().splitlines()[1:]).upper()


def test_tsv_kmer_text_string_labels_multiclass_and_max_length(tmp_path):
    rng = np.random.default_rng(0)

    def sequence(bias):  # three classes of base composition
        return "".join(rng.choice(list("ACGT"), size=60, p=bias))

    biases = {"at_rich": [0.4, 0.1, 0.1, 0.4], "gc_rich": [0.1, 0.4, 0.4, 0.1], "even": [0.25] * 4}
    paths = {}
    for split, count in (("train", 30), ("dev", 10), ("test", 10)):
        rows = [(sequence(bias), label) for _ in range(count) for label, bias in biases.items()]
        if split == "train":  # DNABERT's layout: overlapping 6-mers separated by spaces
            text = "\n".join(" ".join(s[i:i + 6] for i in range(len(s) - 5)) + f"\t{label}" for s, label in rows)
        else:
            text = "\n".join(f"{label}\t{s.lower()}\textra" for s, label in rows)  # other column order, case
        header = "sequence\tlabel" if split == "train" else "Label\tSequence\tnote"
        paths[split] = tmp_path / (f"{split}.tsv" if split != "test" else "test.txt")  # .txt: sniffed
        paths[split].write_text(header + "\n" + text + "\n\n")
    task = tables.load_task(str(paths["train"]), str(paths["dev"]), str(paths["test"]), max_length=50)
    assert task.classes == ["at_rich", "even", "gc_rich"]
    assert len(task.splits["train"].sequences[0]) == 60 and len(task.sequences("train")[0]) == 50
    assert task.splits["dev"].lines[0] == 2
    results = command.run_methods(task, None, ClassifySettings(methods=("baseline",), baseline_k="2-3", tfidf=True))
    test = results["baseline"]["test"]
    assert test["accuracy"] >= 0.8 and test["auroc"] >= 0.9, test  # chance: 1/3, AUROC 0.5 (one-vs-rest)
    assert results["baseline"]["selected"]["tfidf"] and results["baseline"]["selected"]["k_max"] == 3


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("case, message", [
    ("missing", "--dev {dev}: no such file"),
    ("empty", "--dev {dev}: empty file"),
    ("header_only", "--dev {dev}: no data rows"),
    ("no_label_column", "--dev {dev}: line 1: no 'label' column (header: 'sequence', 'class')"),
    ("no_sequence_column", "--dev {dev}: line 1: no 'sequence' column (header: 'seq', 'label')"),
    ("single_class", "--train {train}: every row has the label '1'; classification needs at least two classes"),
    ("unseen_label", "--dev {dev}: line 3: label '2' does not occur in --train (its classes: '0', '1')"),
    ("invalid_letter", "{dev}: line 3: invalid letter 'X' at position 4"),
    ("ragged_row", "{dev}: line 2: 3 field(s), the header has 2"),
    ("bad_kmer_text", "{dev}: line 2: the sequence holds spaces but is not a run of overlapping k-mers"),
])
def test_bad_input_is_one_error_line(case, message, tmp_path, capsys):
    train = _write(tmp_path / "train.csv", "sequence,label\nACGTACGTAC,0\nTTTTGGGGCC,1\n")
    dev = tmp_path / "dev.csv"
    dev_text = {
        "empty": "", "header_only": "sequence,label\n", "no_label_column": "sequence,class\nACGTAC,0\n",
        "no_sequence_column": "seq,label\nACGTAC,0\n",
        "unseen_label": "sequence,label\nACGTAC,0\nACGTAC,2\n",
        "invalid_letter": "sequence,label\nACGTAC,0\nACGTXC,1\n",
        "ragged_row": "sequence,label\nACGTAC,0,9\n", "bad_kmer_text": "sequence,label\nACGT CGTA TTTT,0\n",
    }
    if case == "single_class":
        _write(train, "sequence,label\nACGTACGTAC,1\nTTTTGGGGCC,1\n")
    if case in dev_text:
        _write(dev, dev_text[case])
    elif case != "missing":
        _write(dev, "sequence,label\nACGTAC,0\n")
    code = _classify_cli(tmp_path / "no_model", {"train": train, "dev": dev, "test": train}, tmp_path / "out")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("error: "), err
    assert message.format(train=train, dev=dev) in err, err
    assert not (tmp_path / "out").exists()


def test_bad_settings_are_one_error_line(tmp_path, capsys):
    train = _write(tmp_path / "train.csv", "sequence,label\nACGTACGTAC,0\nTTTTGGGGCC,1\n")
    paths = {"train": train, "dev": train, "test": train}
    for extra, message in ((["--methods", "probe,svm"], "--methods 'probe,svm': expected a comma list"),
                           (["--baseline_k", "3-x"], "--baseline_k '3-x'"),
                           (["--epochs", "0"], "--epochs must be at least 1"),
                           (["--probe_epochs", "0"], "--probe_epochs must be at least 1"),
                           (["--probe_learning_rate", "0"], "--probe_learning_rate must be > 0"),
                           (["--max_length", "-1"], "--max_length must be >= 0")):
        assert _classify_cli(tmp_path / "no_model", paths, tmp_path / "out", *extra) == 2
        assert message in capsys.readouterr().err
    # The model is loaded after the tables are read: a missing model is reported as such.
    assert _classify_cli(tmp_path / "no_model", paths, tmp_path / "out") == 2
    assert f"--model {tmp_path / 'no_model'}: no such file or directory" in capsys.readouterr().err
