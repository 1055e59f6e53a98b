"""Hugging Face export without torch: files, names and layouts, round trip, errors, CLI.

The transformers/torch parity tests are in test_hf_export_torch.py, the export's own tokenizer and
sentence-transformers modules in test_hf_remote_code.py (both import helpers from here).
"""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from dnavec_jax import cli, export, files
from dnavec_jax import model as model_lib
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tokenization import KmerTokenizer
from dnavec_jax.training import checkpointing

REPO = Path(__file__).resolve().parents[1]


# ---- helpers shared with test_hf_export_torch.py ------------------------------

def small_setup(seed: int = 0):
    """k 3..5 tokenizer (1,349 ids), hidden 64, 2 layers, 4 heads; every parameter perturbed.

    init_params leaves biases at 0 and LayerNorm scales at 1, which would hide a
    swapped or dropped bias/scale: random noise on every leaf makes each one matter.
    """
    tokenizer = KmerTokenizer(3, 5)
    config = model_lib.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=64, num_layers=2, num_heads=4,
                                  intermediate_size=128, max_position_embeddings=128, hidden_dropout_rate=0.05)
    return tokenizer, config, perturbed_params(config, seed)


def perturbed_params(config, seed: int = 0):
    """init_params moved off their initial values, the vocabulary padding rows left at 0 (as training does)."""
    params = jax.device_get(model_lib.init_params(config, jax.random.key(seed)))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: (np.asarray(x) + rng.normal(0.0, 0.05, x.shape)).astype(np.float32), params)
    params["embeddings"]["word_embeddings"]["embedding"][config.vocab_size:] = 0
    params["mlm_bias"][config.vocab_size:] = 0
    return params


def chr22_sequence(fasta_path) -> str:
    with gzip.open(fasta_path, "rt") as handle:
        return "".join(line.strip() for line in handle if not line.startswith(">")).upper()


def chr22_windows(fasta_path, lengths, first_start: int = 123_457, gap: int = 97_003) -> list[str]:
    """A/C/G/T-only windows of real chr22, one per length, spread over the megabase (N gap skipped)."""
    sequence = chr22_sequence(fasta_path)
    windows, start = [], first_start
    for length in lengths:
        while not re.fullmatch(r"[ACGT]+", sequence[start:start + length]):
            start = (start + 10_007) % (len(sequence) - length)
        windows.append(sequence[start:start + length])
        start = (start + gap) % (len(sequence) - length)
    return windows


def flat_params(params) -> dict:
    return {"/".join(key.key for key in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    tokenizer, config, params = small_setup()
    out = tmp_path_factory.mktemp("hf") / "export"
    export.export_to_hf(params, config, tokenizer, out, step=1234,
                           train_config={"data": {"prep": {"k_min": 3, "k_max": 5, "seq_length": 128}}})
    return out, tokenizer, config, params


# ---- files, names, layouts ---------------------------------------------------

def test_export_files_and_config(small_export):
    out, tokenizer, config, _ = small_export
    assert sorted(os.listdir(out)) == sorted([
        "config.json", "model.safetensors", "vocab.txt", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "dnavec.json", "README.md", "dnavec_kmers.py", "tokenization_dnavec.py",
        "sentence_dnavec.py", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
        "1_Pooling"])
    hf = json.loads((out / "config.json").read_text())
    assert hf["architectures"] == ["BertForMaskedLM"] and hf["model_type"] == "bert"
    assert (hf["vocab_size"], hf["hidden_size"], hf["num_hidden_layers"], hf["num_attention_heads"],
            hf["intermediate_size"], hf["max_position_embeddings"]) == (1349, 64, 2, 4, 128, 128)
    assert hf["hidden_act"] == "gelu" and hf["layer_norm_eps"] == 1e-12 and hf["pad_token_id"] == 0
    assert hf["attention_probs_dropout_prob"] == 0.0 and hf["hidden_dropout_prob"] == 0.05
    assert hf["tie_word_embeddings"] is True
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "DNAVecTokenizer"
    assert tok_config["auto_map"] == {"AutoTokenizer": ["tokenization_dnavec.DNAVecTokenizer", None]}
    assert (tok_config["k_min"], tok_config["k_max"], tok_config["k_weights"]) == (3, 5, None)
    assert tok_config["model_max_length"] == 128
    # The tokenizer module the export runs is this project's own, byte for byte.
    assert (out / "dnavec_kmers.py").read_bytes() == (REPO / "dnavec_jax" / "tokenization.py").read_bytes()
    assert json.loads((out / "1_Pooling" / "config.json").read_text()) == {"embedding_dimension": 64,
                                                                          "first_kmer_id": 5}
    assert json.loads((out / "special_tokens_map.json").read_text())["mask_token"] == "[MASK]"
    assert (out / "vocab.txt").read_text().splitlines() == tokenizer.vocab
    info = json.loads((out / "dnavec.json").read_text())
    assert info["step"] == 1234 and info["tokenizer"] == {"k_min": 3, "k_max": 5, "k_weights": None}
    assert model_lib.BertConfig.from_dict(info["model"]) == config
    # Readable by others, like any file we write (safetensors itself writes 0600).
    mode = 0o666 & ~files.umask()
    assert {oct(path.stat().st_mode & 0o777) for path in out.rglob("*") if path.is_file()} == {oct(mode)}
    assert oct((out / "1_Pooling").stat().st_mode & 0o777) == oct(0o777 & ~files.umask())


def test_safetensors_names_layouts_and_metadata(small_export):
    out, _, config, params = small_export
    with safe_open(str(out / "model.safetensors"), framework="np") as handle:
        assert handle.metadata() == {"format": "pt"}
        names = set(handle.keys())
    state = load_file(str(out / "model.safetensors"))
    assert all(value.dtype == np.float32 for value in state.values())
    expected = {hf for _, hf, _ in export.name_table(2)}
    assert names == expected and len(names) == len(flat_params(params))
    assert "cls.predictions.decoder.weight" not in names and "cls.predictions.decoder.bias" not in names
    layer = params["encoder"]["layer_1"]
    np.testing.assert_array_equal(state["bert.encoder.layer.1.intermediate.dense.weight"],
                                  layer["intermediate"]["kernel"].T)  # (out, in) = (128, 64)
    assert state["bert.encoder.layer.1.intermediate.dense.weight"].shape == (128, 64)
    np.testing.assert_array_equal(state["bert.encoder.layer.1.attention.self.key.weight"],
                                  layer["attention"]["key"]["kernel"].T)
    np.testing.assert_array_equal(state["bert.encoder.layer.1.attention.output.LayerNorm.weight"],
                                  layer["attention"]["LayerNorm"]["scale"])
    np.testing.assert_array_equal(state["bert.encoder.layer.1.output.LayerNorm.bias"],
                                  layer["output_LayerNorm"]["bias"])
    # The model's vocabulary padding (1,349 ids -> 1,408 rows) is trimmed: the export has the real vocabulary.
    assert params["embeddings"]["word_embeddings"]["embedding"].shape == (1408, 64)
    np.testing.assert_array_equal(state["bert.embeddings.word_embeddings.weight"],
                                  params["embeddings"]["word_embeddings"]["embedding"][:1349])
    np.testing.assert_array_equal(state["cls.predictions.bias"], params["mlm_bias"][:1349])
    np.testing.assert_array_equal(state["bert.pooler.dense.weight"], params["pooler"]["kernel"].T)


def test_round_trip_flax_hf_flax_is_identical(small_export):
    out, tokenizer, config, params = small_export
    loaded = export.load_hf_pretrained(out)
    assert loaded.model_config == config and loaded.initialized == ()
    assert loaded.tokenizer.vocab == tokenizer.vocab
    assert jax.tree.structure(loaded.params) == jax.tree.structure(params)
    for (path, a), b in zip(flat_params(params).items(), flat_params(loaded.params).values()):
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    # Into a training run's config: shapes must agree; non-shape settings come from it.
    run_config = model_lib.BertConfig(**{**config.to_dict(), "dtype": "bfloat16", "remat": True})
    assert export.load_hf_pretrained(out, run_config).model_config is run_config


def test_tokenizer_json_is_a_guard_with_the_instruction(small_export):
    """No tokenizer that reads raw DNA as [UNK]: tools that read tokenizer.json get the instruction instead."""
    from tokenizers import Tokenizer

    out, _, _, _ = small_export
    with pytest.raises(Exception, match=r"Unknown tokenizer version 'not a tokenizer: .*trust_remote_code=True"):
        Tokenizer.from_file(str(out / "tokenizer.json"))


def test_model_card_states_what_users_need(small_export):
    """The card's code runs in test_hf_remote_code.py; here its facts and that the template is filled in."""
    out, _, _, _ = small_export
    card = (out / "README.md").read_text()
    for needed in ("license: apache-2.0", "pipeline_tag: feature-extraction", "training step 1234", "k 3..5",
                   '"seq_length": 128', "trust_remote_code=True", "SentenceTransformer", "1,349 ids",
                   "## Pooling", "## Intended use and limits", "Apache License 2.0", "126 k-mer tokens"):
        assert needed in card, needed
    assert "$" not in card, "a template field was left unfilled"


def test_model_card_shows_the_eval_row_with_its_ceilings(trained_workdir, trained_export, tmp_path):
    """The card of a run's export shows the eval row of the exported step next to the objective's ceiling and
    floor (the figures of metrics.jsonl); an export of a step without an eval row says so."""
    rows = [json.loads(line) for line in (trained_workdir / "metrics.jsonl").read_text().splitlines()]
    step = json.loads((trained_export / "dnavec.json").read_text())["step"]
    row = [r for r in rows if r["split"] == "eval" and r["step"] == step][-1]
    card = (trained_export / "README.md").read_text()
    section = card[card.index("## Evaluation"):card.index("## Data")]
    assert f"at step {step} ({int(row['masked_tokens']):,} masked tokens" in section
    for key, bound in (("accuracy", "accuracy_ceiling"), ("loss", "loss_floor"),
                       ("copy_accuracy", "copy_accuracy_ceiling")):
        assert f"| {row[key]:.4f} | " in section and f" {row[bound]:.4f} |" in section, key
    assert row["accuracy"] <= row["accuracy_ceiling"] + 0.05 and row["loss"] >= row["loss_floor"] - 0.05
    earlier, _ = export.export_checkpoint(trained_workdir, tmp_path / "earlier", step=20)
    assert "No evaluation of the pretraining objective was recorded for this step." in (
        earlier / "README.md").read_text()


def test_full_vocabulary_files(tmp_path):
    tokenizer = KmerTokenizer(3, 8)
    config = model_lib.BertConfig(hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16,
                                  max_position_embeddings=64)
    assert config.vocab_size == tokenizer.vocab_size == 87_365
    params = jax.device_get(model_lib.init_params(config, jax.random.key(1)))
    out = export.export_to_hf(params, config, tokenizer, tmp_path / "full")
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 87_365
    assert (out / "vocab.txt").read_text().splitlines() == tokenizer.vocab
    assert json.loads((out / "tokenizer_config.json").read_text())["k_max"] == 8


# ---- bad input -----------------------------------------------------------------

def _no_leftovers(parent: Path, name: str):
    return not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_output_dir_rules(tmp_path):
    tokenizer, config, params = small_setup()
    out = tmp_path / "out"
    out.mkdir()  # an empty directory is fine
    export.export_to_hf(params, config, tokenizer, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(DNAVecError, match=r"exists and is not empty \(pass --overwrite"):
        export.export_to_hf(params, config, tokenizer, out)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    (out / "stale.txt").write_text("old")
    export.export_to_hf(params, config, tokenizer, out, overwrite=True, step=5)
    assert not (out / "stale.txt").exists() and json.loads((out / "dnavec.json").read_text())["step"] == 5
    (tmp_path / "file").write_text("x")
    with pytest.raises(DNAVecError, match="exists and is not a directory"):
        export.export_to_hf(params, config, tokenizer, tmp_path / "file")
    assert _no_leftovers(tmp_path, "out") and _no_leftovers(tmp_path, "file")


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    tokenizer, config, params = small_setup()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export.writer, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export.export_to_hf(params, config, tokenizer, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    # With --overwrite the old export survives a failed one.
    monkeypatch.undo()
    export.export_to_hf(params, config, tokenizer, tmp_path / "out", step=1)
    monkeypatch.setattr(export.writer, "save_file", broken_save)
    with pytest.raises(OSError):
        export.export_to_hf(params, config, tokenizer, tmp_path / "out", overwrite=True, step=2)
    assert json.loads((tmp_path / "out" / "dnavec.json").read_text())["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_incompatible_config_is_one_clear_error(tmp_path):
    tokenizer, config, params = small_setup()
    with pytest.raises(DNAVecError, match=r"tokenizer \(k 3..8\) has 87,365 ids but the model's vocab_size is 1,349"):
        export.export_to_hf(params, config, KmerTokenizer(3, 8), tmp_path / "a")
    wider = model_lib.BertConfig(**{**config.to_dict(), "intermediate_size": 256})
    with pytest.raises(DNAVecError,
                       match=r"layer_0/intermediate/bias has shape \(128,\), the model config needs \(256,\)"):
        export.export_to_hf(params, wider, tokenizer, tmp_path / "b")
    deeper = model_lib.BertConfig(**{**config.to_dict(), "num_layers": 3})
    with pytest.raises(DNAVecError, match="missing encoder/layer_2"):
        export.export_to_hf(params, deeper, tokenizer, tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_import_rejects_incompatible_directories(small_export, tmp_path):
    out, _, config, _ = small_export

    def variant(name, config_changes=None, drop=(), add=None, weights=True):
        target = tmp_path / name
        target.mkdir()
        hf = json.loads((out / "config.json").read_text())
        hf.update(config_changes or {})
        (target / "config.json").write_text(json.dumps(hf))
        if weights:
            state = load_file(str(out / "model.safetensors"))
            state = {k: v for k, v in state.items() if not k.startswith(drop)} if drop else state
            state.update(add or {})
            save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
        return target

    with pytest.raises(DNAVecError, match="model_type is 'roberta'"):
        export.load_hf_pretrained(variant("roberta", {"model_type": "roberta"}))
    with pytest.raises(DNAVecError, match="hidden_act is 'gelu_new', needs 'gelu'"):
        export.load_hf_pretrained(variant("act", {"hidden_act": "gelu_new"}))
    with pytest.raises(DNAVecError, match="num_layers is 2, the model config has 12"):
        export.load_hf_pretrained(out, model_lib.BertConfig(vocab_size=1349, hidden_size=64, num_heads=4,
                                                               intermediate_size=128, max_position_embeddings=128))
    with pytest.raises(DNAVecError, match=r"hidden_size \(64\) must be divisible by model.num_heads \(5\)"):
        export.load_hf_pretrained(variant("heads", {"num_attention_heads": 5}))
    with pytest.raises(DNAVecError, match="no model.safetensors"):
        export.load_hf_pretrained(variant("empty", weights=False))
    pickled = variant("pickle", weights=False)
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(DNAVecError, match="only model.safetensors weights can be loaded"):
        export.load_hf_pretrained(pickled)
    with pytest.raises(DNAVecError, match=r"weights missing: bert.encoder.layer.1"):
        export.load_hf_pretrained(variant("short", drop=("bert.encoder.layer.1.",)))
    with pytest.raises(DNAVecError, match="weights our model does not have: bert.encoder.layer.2"):
        extra_layer = {"bert.encoder.layer.2.output.dense.bias": np.zeros(64, np.float32)}
        export.load_hf_pretrained(variant("long", add=extra_layer))
    untied = {"cls.predictions.decoder.weight": np.ones((1349, 64), np.float32)}
    with pytest.raises(DNAVecError, match="differs from the word embeddings"):
        export.load_hf_pretrained(variant("untied", add=untied))
    with pytest.raises(DNAVecError, match="intermediate.dense.weight has shape"):
        export.load_hf_pretrained(variant("wider", {"intermediate_size": 256}))
    with pytest.raises(DNAVecError, match="no such directory"):
        export.load_hf_pretrained(tmp_path / "absent")


def test_import_fills_pooler_and_head_only_when_allowed(small_export, tmp_path):
    out, _, config, params = small_export
    state = load_file(str(out / "model.safetensors"))
    # A BertModel checkpoint: names without "bert.", no MLM head, no pooler.
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text((out / "config.json").read_text())
    save_file({k[len("bert."):]: v for k, v in state.items() if k.startswith("bert.") and "pooler" not in k},
              str(base / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(DNAVecError, match=r"cls.predictions.*allow_init=\('pooler', 'mlm_head'\)"):
        export.load_hf_pretrained(base)
    loaded = export.load_hf_pretrained(base, allow_init=("pooler", "mlm_head"), seed=3)
    assert loaded.initialized == ("pooler", "mlm_head") and loaded.tokenizer is None
    np.testing.assert_array_equal(loaded.params["encoder"]["layer_0"]["output"]["kernel"],
                                  params["encoder"]["layer_0"]["output"]["kernel"])
    fresh = jax.device_get(model_lib.init_params(config, jax.random.key(3)))
    np.testing.assert_array_equal(loaded.params["mlm_transform"]["kernel"], fresh["mlm_transform"]["kernel"])
    # Tied decoder copies and the NSP head of BertForPreTraining are accepted.
    full = tmp_path / "pretraining"
    full.mkdir()
    (full / "config.json").write_text((out / "config.json").read_text())
    extra = {"cls.predictions.decoder.weight": state["bert.embeddings.word_embeddings.weight"],
             "cls.predictions.decoder.bias": state["cls.predictions.bias"],
             "cls.seq_relationship.weight": np.zeros((2, 64), np.float32)}
    save_file({**state, **extra}, str(full / "model.safetensors"))
    assert export.load_hf_pretrained(full).initialized == ()
    # bfloat16 weights (a common save dtype) load as float32.
    import ml_dtypes

    half = tmp_path / "bf16"
    half.mkdir()
    (half / "config.json").write_text((out / "config.json").read_text())
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in state.items()}, str(half / "model.safetensors"))
    loaded = export.load_hf_pretrained(half).params["encoder"]["layer_1"]["attention"]["value"]["kernel"]
    original = params["encoder"]["layer_1"]["attention"]["value"]["kernel"]
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, original.astype(ml_dtypes.bfloat16).astype(np.float32))


# ---- command line ------------------------------------------------------------

@pytest.fixture
def fake_checkpointing(monkeypatch):
    """Stands in for training.checkpointing.load_for_inference (no training run needed)."""
    tokenizer, config, params = small_setup()
    calls = []

    def load_for_inference(workdir, step=None):
        calls.append((workdir, step))
        if step not in (None, 20):
            raise DNAVecError(f"{workdir}: no checkpoint for step {step} (have: 10, 20)")
        train_config = {"data": {"prep": {"k_min": 3, "k_max": 5, "seq_length": 128}}}
        return params, config, train_config, 20

    monkeypatch.setattr(checkpointing, "load_for_inference", load_for_inference)
    return calls, params


def test_cli_export_hf(tmp_path, capsys, fake_checkpointing):
    calls, params = fake_checkpointing
    workdir = tmp_path / "run"
    workdir.mkdir()
    assert cli.main(["export-hf", "--workdir", str(workdir), "--output_dir", str(tmp_path / "hf")]) == 0
    assert "exported step 20" in capsys.readouterr().out
    assert calls == [(str(workdir), None)]
    loaded = export.load_hf_pretrained(tmp_path / "hf")
    np.testing.assert_array_equal(loaded.params["mlm_bias"], params["mlm_bias"])
    assert json.loads((tmp_path / "hf" / "dnavec.json").read_text())["step"] == 20

    def fails(argv, message):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err

    fails(["export-hf", "--workdir", str(workdir), "--output_dir", str(tmp_path / "hf")],
          "exists and is not empty (pass --overwrite")
    fails(["export-hf", "--workdir", str(workdir), "--output_dir", str(tmp_path / "hf2"), "--step", "15"],
          "no checkpoint for step 15")
    fails(["export-hf", "--workdir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "hf3")],
          "no such directory")
    assert not (tmp_path / "hf2").exists() and not (tmp_path / "hf3").exists()
    assert _no_leftovers(tmp_path, "hf2")
    assert cli.main(["export-hf", "--workdir", str(workdir), "--output_dir", str(tmp_path / "hf"),
                     "--step", "20", "--overwrite"]) == 0


def test_cli_with_the_trainers_checkpoints(tmp_path, capsys):
    """A real Orbax checkpoint written with checkpointing.save, exported by `dnavec export-hf`."""
    tokenizer, config, params = small_setup()
    workdir = tmp_path / "run"
    workdir.mkdir()

    def fails(argv, message):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err

    out = ["--output_dir", str(tmp_path / "hf")]
    fails(["export-hf", "--workdir", str(workdir), *out], "no config.json")
    train_config = {"model": config.to_dict(), "data": {"prep": {"k_min": 3, "k_max": 5, "seq_length": 128}}}
    checkpointing.write_config(workdir, train_config)
    fails(["export-hf", "--workdir", str(workdir), *out], "no checkpoints")
    manager = checkpointing.make_manager(workdir, async_save=False)
    for step, scale in ((10, 0.5), (20, 1.0)):
        step_params = jax.tree.map(lambda x, s=scale: (x * s).astype(np.float32), params)
        checkpointing.save(manager, step, step_params, {"count": np.zeros((), np.int32)}, {"step": step})
    manager.wait_until_finished()
    manager.close()
    fails(["export-hf", "--workdir", str(workdir), *out, "--step", "15"], "no checkpoint for step 15")
    assert not (tmp_path / "hf").exists() and _no_leftovers(tmp_path, "hf")

    assert cli.main(["export-hf", "--workdir", str(workdir), *out]) == 0
    assert "exported step 20" in capsys.readouterr().out
    loaded = export.load_hf_pretrained(tmp_path / "hf")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded.params)):
        np.testing.assert_array_equal(a, b)
    assert loaded.tokenizer.vocab == tokenizer.vocab
    assert '"seq_length": 128' in (tmp_path / "hf" / "README.md").read_text()
    assert cli.main(["export-hf", "--workdir", str(workdir), *out, "--step", "10", "--overwrite"]) == 0
    loaded = export.load_hf_pretrained(tmp_path / "hf")
    np.testing.assert_array_equal(loaded.params["mlm_bias"], params["mlm_bias"] * np.float32(0.5))
    assert json.loads((tmp_path / "hf" / "dnavec.json").read_text())["step"] == 10


def test_python_m_entry_point(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "x").write_text("x")
    result = subprocess.run(
        [sys.executable, "-m", "dnavec_jax.cli", "export-hf", "--workdir", str(tmp_path), "--output_dir", str(out)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: --output_dir") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    help_text = subprocess.run([sys.executable, "-m", "dnavec_jax.cli", "export-hf", "--help"], capture_output=True,
                               text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert help_text.returncode == 0 and "--output_dir" in help_text.stdout and "--step" in help_text.stdout


def test_k_weights_are_recorded_and_restored(tmp_path):
    _, config, params = small_setup()
    tokenizer = KmerTokenizer(3, 5, k_weights=[1, 0, 3])
    out = export.export_to_hf(params, config, tokenizer, tmp_path / "weighted")
    assert json.loads((out / "dnavec.json").read_text())["tokenizer"]["k_weights"] == [0.25, 0.0, 0.75]
    restored = export.load_hf_pretrained(out).tokenizer
    sequence = "GATTACA" * 30
    assert restored.kmer_text(sequence, seed=3) == tokenizer.kmer_text(sequence, seed=3)
    assert json.loads((out / "tokenizer_config.json").read_text())["k_weights"] == [0.25, 0.0, 0.75]
    assert "probabilities [0.25, 0.0, 0.75]" in (out / "README.md").read_text()
    # Without dnavec.json the k range still comes from vocab.txt (weights are then unknown: uniform).
    (out / "dnavec.json").unlink()
    assert export.kmer_tokenizer_from_export(out).vocab == tokenizer.vocab
    (out / "vocab.txt").write_text("\n".join(tokenizer.vocab[:-1]) + "\n")
    with pytest.raises(DNAVecError, match=r"not the DNAVec k-mer vocabulary for k 3..5 \(1,348 lines, expected 1,349"):
        export.kmer_tokenizer_from_export(out)
