"""What `dnavec classify` leaves behind and `dnavec predict` (dnavec_jax/tools/predict.py): predictions/*.csv, the
classifier export (loaded by transformers), predict on CSV and FASTA(.gz), windows, --seeds, bad input.

One classify run (module fixture) on a small planted-motif task with the session's tiny model
(configs/tiny.py, k 3..4, 62 k-mer tokens a window, so each 150-base row has 3 windows).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import shutil

import jax
import numpy as np
import pytest

from dnavec_jax import cli, export
from dnavec_jax.tools.classify import classifier as classifier_lib
from dnavec_jax.tools.classify import metrics, motif, report

SEED = 5


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _one_error_line(capsys, after_log: bool = False) -> str:
    """The error line; after_log: classify's progress log lines may come first."""
    err = capsys.readouterr().err.strip()
    if after_log:
        err = err.splitlines()[-1]
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def classified(trained_workdir, chr22_fasta, demo_prep, tmp_path_factory):
    """classify with every method, --seeds 2 and --predictions all; test.csv has an extra column, in front."""
    root = tmp_path_factory.mktemp("classified")
    paths = motif.write_task(
        motif.planted_motif_task(chr22_fasta, pretraining=demo_prep, num_windows=40, length=150, seed=3), root / "task")
    rows = _rows(paths["test"])
    with open(paths["test"], "w", newline="") as handle:  # the input's own columns must come through as they are
        writer = csv.writer(handle)
        writer.writerow(["id", "Sequence", "label"])
        writer.writerows([f"row{i}", row["sequence"], "neg" if row["label"] == "0" else "pos"]
                         for i, row in enumerate(rows))
    for split in ("train", "dev"):  # string labels everywhere
        text = paths[split].read_text().replace(",0\n", ",neg\n").replace(",1\n", ",pos\n")
        paths[split].write_text(text)
    out = root / "out"
    code = cli.main(["classify", "--model", str(trained_workdir), "--train", str(paths["train"]),
                     "--dev", str(paths["dev"]), "--test", str(paths["test"]), "--output_dir", str(out),
                     "--probe_features", "mean,static_tokens", "--epochs", "2", "--batch_size", "8",
                     "--learning_rate", "3e-3", "--probe_epochs", "3", "--seed", str(SEED), "--seeds", "2",
                     "--predictions", "all"])
    assert code == 0
    return paths, out


def test_predictions_csv_columns_order_and_rows(classified):
    paths, out = classified
    results = json.loads((out / "results.json").read_text())
    for split in ("dev", "test"):
        table = _rows(out / "predictions" / f"{split}.csv")
        inputs = _rows(paths[split])
        assert [{k: row[k] for k in inputs[0]} for row in table] == inputs  # every input row, in order, as written
        columns = list(table[0])
        first = ["prediction", "prob_neg", "prob_pos"]
        assert columns[:len(inputs[0]) + 3] == [*inputs[0], *first]  # input columns, then the fine-tuned model's
        for name in ("baseline", "probe_mean", "probe_static_tokens"):
            assert f"{name}_prediction" in columns and f"{name}_prob_pos" in columns
        for row in table:
            probs = np.array([float(row["prob_neg"]), float(row["prob_pos"])])
            assert probs.sum() == pytest.approx(1.0, abs=1e-6)
            assert row["prediction"] == ("neg", "pos")[int(probs.argmax())]
        # The fine-tuned columns are the --seed run's: its reported metrics follow from them.
        labels = [("neg", "pos").index(row["label"]) for row in inputs]
        predicted = [("neg", "pos").index(row["prediction"]) for row in table]
        run = results["methods"]["finetune"]["runs"][0]
        assert run["seed"] == SEED and run[split]["accuracy"] == pytest.approx(np.mean(np.equal(labels, predicted)))


def test_seeds_give_mean_and_sd(classified):
    _, out = classified
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["seeds"] == 2
    for name in ("probe_mean", "probe_static_tokens", "finetune"):
        row = results["methods"][name]
        assert row["seeds"] == [SEED, SEED + 1] and [run["seed"] for run in row["runs"]] == [SEED, SEED + 1]
        accuracies = [run["test"]["accuracy"] for run in row["runs"]]
        assert row["test"]["accuracy"] == pytest.approx(np.mean(accuracies))
        assert row["test_sd"]["accuracy"] == pytest.approx(np.std(accuracies, ddof=1))
    assert "seeds" not in results["methods"]["baseline"] and "test_sd" not in results["methods"]["baseline"]
    table = report.format_table(results["methods"])
    assert "| fine-tune, 2 seeds |" in table and " ± " in table


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifier_export_loads_in_transformers_and_agrees(classified, trained_export, chr22_fasta, tmp_path,
                                                            pooling):
    """AutoModelForSequenceClassification loads the export (nothing missing or unexpected, id2label from the task):
    the export's own mean-pooling class with trust_remote_code (never, without it, a model that reads [CLS]), or
    BertForSequenceClassification for pooling "cls"; its probabilities equal `dnavec predict`'s on one-window
    sequences, and the mean of its window logits on long ones; the shared files are those of the MLM export."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from test_hf_export import chr22_sequence

    _, out = classified
    directory = out / "classifier"
    assert classifier_lib.load_classifier(directory).pooling == "mean"  # classify's default
    card = (directory / "README.md").read_text()
    assert card.count("pipeline_tag: text-classification") == 1 and "pipeline_tag: feature-extraction" not in card
    assert "trust_remote_code=True).eval()" in card
    if pooling == "cls":
        classifier = dataclasses.replace(classifier_lib.load_classifier(directory), pooling="cls")
        directory = classifier_lib.export_classifier(classifier, tmp_path / "cls", {})
    else:
        with pytest.raises(ValueError, match="trust_remote_code"):
            transformers.AutoModelForSequenceClassification.from_pretrained(str(directory))
    remote = {"trust_remote_code": True} if pooling == "mean" else {}
    model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(directory), output_loading_info=True, **remote)
    model.eval()
    assert type(model).__name__ == export.CLASSIFIER_ARCHITECTURES[pooling]
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.id2label == {0: "neg", 1: "pos"} and model.config.label2id == {"neg": 0, "pos": 1}
    for path in sorted(trained_export.rglob("*")):  # one writer: the same tokenizer and module files
        name = path.relative_to(trained_export).as_posix()
        if path.is_file() and name not in ("config.json", "model.safetensors", "README.md", "dnavec.json",
                                           "tokenizer_config.json"):
            assert (directory / name).read_bytes() == path.read_bytes(), name
    mlm_tokenizer, ours_tokenizer = (json.loads((d / "tokenizer_config.json").read_text())
                                     for d in (trained_export, directory))
    assert {**mlm_tokenizer, "k": None, "seed": SEED} == ours_tokenizer  # random k, the classifier's seed
    mlm_info, ours = (json.loads((d / "dnavec.json").read_text()) for d in (trained_export, directory))
    run_time = ("dtype", "attention_implementation", "remat")  # the classifier's are those it was fine-tuned with
    for info in (mlm_info, ours):
        info["model"] = {k: v for k, v in info["model"].items() if k not in run_time}
    assert {k: v for k, v in ours.items() if k != "classifier"} == mlm_info
    assert ours["classifier"]["seed"] == SEED and ours["classifier"]["labels"] == ["neg", "pos"]

    # Two epochs of the tiny model leave nearly equal probabilities: noise on every weight and a large head,
    # written by the same export, make them differ, so that agreeing to 1e-5 means something.
    classifier = classifier_lib.load_classifier(directory)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: (x + rng.normal(0, 0.1, x.shape)).astype(np.float32), classifier.loaded.params)
    loud = dataclasses.replace(classifier, loaded=dataclasses.replace(classifier.loaded, params=params),
                               kernel=rng.normal(0, 0.3, classifier.kernel.shape).astype(np.float32))
    assert loud.pooling == pooling
    directory = classifier_lib.export_classifier(loud, tmp_path / "loud", {})
    model = transformers.AutoModelForSequenceClassification.from_pretrained(str(directory), **remote).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), trust_remote_code=True)
    genome = chr22_sequence(chr22_fasta)
    sequences = [genome[200_000 + 997 * i: 200_000 + 997 * i + length]
                 for i, length in enumerate([20, 40, 64, 64, 33, 1000])]  # up to 64 bases: one window of <= 62 k-mers
    source = tmp_path / "short.csv"
    source.write_text("sequence\n" + "\n".join(sequences) + "\n")
    assert cli.main(["predict", "--model", str(directory), "--input", str(source),
                     "--output", str(tmp_path / "p.csv")]) == 0
    ours = np.array([[float(row["prob_neg"]), float(row["prob_pos"])] for row in _rows(tmp_path / "p.csv")])
    for sequence, probs in zip(sequences, ours):
        windows = classifier_lib.window_ids(classifier.loaded, np.frombuffer(sequence.encode(), np.uint8), SEED, 0, "s")
        assert (len(windows) == 1) == (len(sequence) <= 64)
        if len(windows) == 1:  # the export's own tokenizer gives predict's tokenization
            assert tokenizer(sequence)["input_ids"] == [2, *windows[0].tolist(), 3]
        with torch.no_grad():
            logits = torch.cat([model(input_ids=torch.tensor([[2, *ids.tolist(), 3]])).logits for ids in windows])
        theirs = logits.mean(0).softmax(-1).numpy()
        np.testing.assert_allclose(probs, theirs, atol=1e-5)
        assert np.log(probs[1] / probs[0]) == pytest.approx(np.log(theirs[1] / theirs[0]), abs=1e-4)
    last = np.frombuffer(sequences[-1].encode(), np.uint8)
    assert len(classifier_lib.window_ids(classifier.loaded, last, SEED, 0, "s")) == 17  # 998 k-mers, windows of <= 62
    # The sequences get different log-odds: agreeing means something.
    assert np.ptp(np.log(ours[:, 1] / ours[:, 0])) > 0.05, ours


def test_predict_equals_predictions_csv_on_csv_and_fasta(classified, tmp_path, capsys):
    paths, out = classified
    expected = _rows(out / "predictions" / "test.csv")
    assert cli.main(["predict", "--model", str(out / "classifier"), "--input", str(paths["test"]),
                     "--output", str(tmp_path / "test.csv")]) == 0
    assert "predicted 12 sequences (36 windows)" in capsys.readouterr().out
    got = _rows(tmp_path / "test.csv")
    columns = ["id", "Sequence", "label", "prediction", "prob_neg", "prob_pos"]
    assert list(got[0]) == columns
    assert got == [{k: row[k] for k in columns} for row in expected]  # the same text, cell for cell
    # FASTA and FASTA.gz: the same sequences, named records; a record's tokens depend on its letters only.
    fasta = "".join(f">{row['id']} some description\n{row['Sequence'][:70].lower()}\n{row['Sequence'][70:]}\n"
                    for row in expected)
    (tmp_path / "test.fa").write_text(fasta)
    with gzip.open(tmp_path / "test.fa.gz", "wt") as handle:
        handle.write(fasta)
    for name in ("test.fa", "test.fa.gz"):
        assert cli.main(["predict", "--model", str(out / "classifier"), "--input", str(tmp_path / name),
                         "--output", str(tmp_path / f"{name}.csv")]) == 0
        got = _rows(tmp_path / f"{name}.csv")
        assert list(got[0]) == ["id", "prediction", "prob_neg", "prob_pos"]
        assert got == [{"id": row["id"], **{k: row[k] for k in columns[3:]}} for row in expected], name


def test_predict_refuses_what_is_not_a_classifier(classified, trained_workdir, trained_export, tmp_path, capsys):
    paths, out = classified
    foreign = tmp_path / "foreign"
    shutil.copytree(out / "classifier", foreign)
    info = json.loads((foreign / "dnavec.json").read_text())
    del info["classifier"]
    (foreign / "dnavec.json").write_text(json.dumps(info))
    mismatched = tmp_path / "mismatched"  # a mean-pooling model class with a [CLS] rule in dnavec.json
    shutil.copytree(out / "classifier", mismatched)
    info = json.loads((mismatched / "dnavec.json").read_text())
    info["classifier"]["pooling"] = "cls"
    (mismatched / "dnavec.json").write_text(json.dumps(info))
    output = tmp_path / "pred.csv"
    for model, message in ((trained_export, "not a sequence classifier (config.json architectures "
                                            "['BertForMaskedLM']"),
                           (trained_workdir, "a training run directory, not a classifier"),
                           (foreign, "a DNAVecBertForSequenceClassification from another tool"),
                           (mismatched, "dnavec.json pooling 'cls' does not match config.json architectures "
                                        "['DNAVecBertForSequenceClassification']"),
                           (tmp_path / "nothing", "no such directory")):
        assert cli.main(["predict", "--model", str(model), "--input", str(paths["test"]),
                         "--output", str(output)]) == 2
        err = _one_error_line(capsys)
        assert f"--model {model}: {message}" in err and "OUT/classifier" in err, err
        assert not output.exists()


@pytest.mark.parametrize("text, message", [
    ("id,seq\nr1,ACGTACGT\n", "--input {input}: line 1: no 'sequence' column (header: 'id', 'seq')"),
    ("sequence\nACGTACGTAC\nACGTXCGTAC\n", "{input}: line 3: invalid letter 'X' at position 4"),
    ("sequence\n", "--input {input}: no data rows (only a header)"),
    ("sequence,prediction\nACGTACGTAC,x\n", "{input}: line 1: column 'prediction' is one the predictions add"),
    ("sequence\nACGTACGTAC\nACNAC\n", "{input}: line 3: no k-mer to classify"),
])
def test_predict_bad_input_is_one_line_and_writes_nothing(classified, tmp_path, capsys, text, message):
    _, out = classified
    source = tmp_path / "input.csv"
    source.write_text(text)
    output = tmp_path / "pred.csv"
    assert cli.main(["predict", "--model", str(out / "classifier"), "--input", str(source),
                     "--output", str(output)]) == 2
    assert message.format(input=source) in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.csv"]  # no output, no temporary file


def test_a_late_error_leaves_the_output_dir_unchanged(trained_workdir, classified, tmp_path, capsys):
    """A sequence without a k-mer is found only once the model runs: the earlier outputs stay as they were."""
    paths, _ = classified
    dev = tmp_path / "dev.csv"
    dev.write_text(paths["dev"].read_text() + "ACNAC,pos\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("earlier")
    (out / "predictions").mkdir()
    (out / "predictions" / "dev.csv").write_text("earlier")
    before = sorted((p.relative_to(out).as_posix(), p.read_bytes() if p.is_file() else b"") for p in out.rglob("*"))
    code = cli.main(["classify", "--model", str(trained_workdir), "--train", str(paths["train"]), "--dev", str(dev),
                     "--test", str(paths["test"]), "--output_dir", str(out), "--methods", "baseline,probe",
                     "--probe_features", "mean", "--overwrite"])
    assert code == 2
    assert f"{dev}: line {len(dev.read_text().splitlines())}: no k-mer to embed" in _one_error_line(capsys, True)
    after = sorted((p.relative_to(out).as_posix(), p.read_bytes() if p.is_file() else b"") for p in out.rglob("*"))
    assert after == before


def test_multiclass_auroc_is_one_vs_rest():
    from sklearn.metrics import roc_auc_score

    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=len(labels)).astype(np.float32)  # float32: sums off by ~1e-7
    scores = metrics.classification_metrics(labels, probs)
    by_hand = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(3)])
    assert scores["auroc"] == pytest.approx(by_hand)
    perfect = np.eye(3)[labels] * 0.9 + 0.1 / 3
    assert metrics.classification_metrics(labels, perfect)["auroc"] == 1.0
    assert metrics.classification_metrics(labels[:4], probs[:4])["auroc"] is None  # class 2 absent: undefined
