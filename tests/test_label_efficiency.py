"""`dnavec classify --train_sizes` (tools/classify/curves.py, command.run_curves): nested class-stratified
subsamples redrawn per seed, the paired bootstrap, label_efficiency.csv / .png and results.json, its errors.

The model is the session's trained_workdir (configs/tiny.py after 40 steps), the task a small planted-motif
task; the probes and the baseline keep it to seconds.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from dnavec_jax import cli
from dnavec_jax.tools.classify import curves, metrics, motif


@pytest.mark.parametrize("classes", [2, 3])
def test_auroc_of_many_resamples_is_scikit_learns(classes):
    rng = np.random.default_rng(classes)
    labels = np.tile(np.arange(classes), 20)
    probs = rng.dirichlet(np.ones(classes), size=(5, len(labels)))
    probs[:, :10] = probs[:, 10:20]  # ties
    rows = np.stack([rng.permutation(len(labels)) for _ in range(5)])
    got = curves.auroc_rows(labels[rows], np.take_along_axis(probs, rows[..., None], axis=1))
    want = [metrics.classification_metrics(labels[r], p[r])["auroc"] for r, p in zip(rows, probs)]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_nested_order_keeps_each_prefix_stratified_and_redraws_per_seed():
    labels = np.array([0] * 70 + [1] * 30)
    order = curves.nested_order(labels, np.random.default_rng(0))
    assert sorted(order) == list(range(100))
    for size in range(10, 101):
        assert abs(labels[order[:size]].sum() - 0.3 * size) <= 1, size  # the class share of every prefix
    other = curves.nested_order(labels, np.random.default_rng(1))
    assert set(order[:20]) != set(other[:20])  # another draw, another subsample


def test_paired_bootstrap_interval():
    rng = np.random.default_rng(0)
    labels = np.tile([0, 1], 50)
    noise = [rng.dirichlet([1, 1], size=100) for _ in range(4)]
    informed = [np.stack([1 - p, p], 1) for p in (0.3 * labels + 0.7 * n[:, 1] for n in noise)]
    low, high = curves.paired_bootstrap(labels, informed, noise, seed=0)
    gap = np.mean([metrics.classification_metrics(labels, i)["auroc"] - metrics.classification_metrics(labels, n)
                   ["auroc"] for i, n in zip(informed, noise)])
    assert 0 < low < gap < high, (low, gap, high)
    # Paired: a model that ranks every row as the other does has difference 0 in every resample, however much
    # each one's AUROC moves with the rows and draws resampled.
    squeezed = [0.5 + 0.1 * (n - 0.5) for n in noise]
    assert curves.paired_bootstrap(labels, squeezed, noise, seed=1) == (0.0, 0.0)
    assert curves.paired_bootstrap(labels, informed, noise, seed=0) == (low, high)  # seeded


def _cli(model, paths, output_dir, *extra):
    return cli.main(["classify", "--model", str(model), "--train", str(paths["train"]), "--dev", str(paths["dev"]),
                     "--test", str(paths["test"]), "--output_dir", str(output_dir), *extra])


@pytest.fixture(scope="module")
def task_paths(chr22_fasta, demo_prep, tmp_path_factory):
    """56 / 12 / 12 rows."""
    return motif.write_task(motif.planted_motif_task(chr22_fasta, pretraining=demo_prep, num_windows=40, seed=4),
                            tmp_path_factory.mktemp("curve_task"))


def test_label_efficiency_cli(trained_workdir, task_paths, tmp_path, capsys):
    flags = ["--train_sizes", "40,16", "--seeds", "2", "--methods", "baseline,probe", "--probe_features", "mean"]
    assert _cli(trained_workdir, task_paths, tmp_path / "out", *flags) == 0
    out = capsys.readouterr().out
    assert "| train size | method | pretrained AUROC | random-init AUROC | difference [95% CI] |" in out
    assert "the train subsample of each size" in out  # what --seeds varies, in the header
    with open(tmp_path / "out" / curves.CSV_FILE, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(curves.COLUMNS)
    assert [(row["train_size"], row["method"]) for row in rows] == [("16", "probe_mean"), ("40", "probe_mean")]
    assert (tmp_path / "out" / curves.FIGURE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "out" / "predictions").exists() and not (tmp_path / "out" / "classifier").exists()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    curve = results["label_efficiency"]
    assert curve["draws"] == 2 and results["seeds"]["seeds"] == [0, 1]
    assert results["random_init"]["word_init"] == "normal" and "config.json" in results["random_init"][
        "init_settings_from"]
    for row, stored in zip(rows, curve["rows"]):
        runs = curve["runs"][row["train_size"]]
        pretrained = np.mean([run["test"]["auroc"] for run in runs["probe_mean"]])
        twin = np.mean([run["test"]["auroc"] for run in runs["random_init_probe_mean"]])
        baseline = np.mean([run["test"]["auroc"] for run in runs["baseline"]])
        assert float(row["pretrained_auroc"]) == pytest.approx(pretrained, abs=1e-6) == stored["pretrained_auroc"]
        assert float(row["difference"]) == pytest.approx(pretrained - twin, abs=1e-6)
        assert float(row["ci_low"]) <= float(row["ci_high"])
        assert float(row["kmer_baseline_auroc"]) == pytest.approx(baseline, abs=1e-6)
        assert [run["seed"] for run in runs["probe_mean"]] == [0, 1]
    # The baseline is deterministic given its rows: the two seeds drew different 16-row subsamples.
    small = curve["runs"]["16"]["baseline"]
    assert small[0]["dev"] != small[1]["dev"] or small[0]["selected"] != small[1]["selected"]
    # Again over the same directory: refused, then replaced; a plain run then removes the curve files.
    assert _cli(trained_workdir, task_paths, tmp_path / "out", *flags) == 2
    assert "exists (pass --overwrite" in capsys.readouterr().err
    assert _cli(trained_workdir, task_paths, tmp_path / "out", "--methods", "baseline", "--overwrite") == 0
    assert not (tmp_path / "out" / curves.CSV_FILE).exists()
    plain = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(plain) == {"model", "task", "settings", "methods", "time_s"}  # no flag: today's report


@pytest.mark.parametrize("flags, message", [
    (["--train_sizes", "16", "--seeds", "1"], "--train_sizes draws one subsample per seed: pass --seeds 2 or more"),
    (["--train_sizes", "16,x", "--seeds", "2"], "--train_sizes '16,x': expected a comma list of positive integers"),
    (["--train_sizes", "16", "--seeds", "2", "--methods", "baseline"], "--methods needs probe or finetune"),
    (["--train_sizes", "57", "--seeds", "2"], "--train_sizes 57: the train split has only 56 rows"),
    (["--train_sizes", "3", "--seeds", "2"], "--train_sizes 3: too few rows for class"),
])
def test_label_efficiency_errors_are_one_line(flags, message, trained_workdir, task_paths, tmp_path, capsys):
    assert _cli(trained_workdir, task_paths, tmp_path / "out", *flags) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
