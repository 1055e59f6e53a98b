"""Parity of the Hugging Face export with the Flax model, through transformers and torch (CPU, float32).

On real chr22 windows: BertForMaskedLM logits, AutoModel hidden states and pooler
output match model.BertForMaskedLM to 1e-4 max-abs; AutoTokenizer (the export's own, on k-mer
text here; raw DNA in test_hf_remote_code.py) gives the project tokenizer's ids; loading reports
nothing missing.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_helpers import mlm_accuracy_hf  # noqa: E402
from test_hf_export import chr22_windows, perturbed_params, small_setup  # noqa: E402

from dnavec_jax import export  # noqa: E402
from dnavec_jax import model as model_lib  # noqa: E402
from dnavec_jax.tokenization import MASK_ID, KmerTokenizer  # noqa: E402

TOLERANCE = 1e-4
POOLER_KEYS = {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
MLM_HEAD_KEYS = {"cls.predictions.bias", "cls.predictions.transform.dense.weight",
                 "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
                 "cls.predictions.transform.LayerNorm.bias"}


def load_all(out):
    from transformers import AutoModel, AutoTokenizer, BertForMaskedLM

    mlm, mlm_info = BertForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    base, base_info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    return (mlm.eval(), mlm_info, base.eval(), base_info,
            AutoTokenizer.from_pretrained(str(out), trust_remote_code=True))


def flax_outputs(config, params, ids, mask, segments):
    length = ids.shape[1]
    positions = np.tile(np.arange(length, dtype=np.int32)[None], (ids.shape[0], 1))
    out = model_lib.BertForMaskedLM(config).apply(
        {"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(segments), jnp.asarray(positions))
    out = {name: np.asarray(value, dtype=np.float32) for name, value in out.items()}
    # The Flax model pads the vocabulary to a multiple of 128 with -inf logits; the export has the real one.
    assert np.isneginf(out["mlm_logits"][..., config.vocab_size:]).all()
    out["mlm_logits"] = out["mlm_logits"][..., : config.vocab_size]
    return out


def check_parity(out, tokenizer, config, params, windows, seeds):
    """Tokenizes windows with AutoTokenizer, compares ids and model outputs; returns the max-abs gaps."""
    mlm, mlm_info, base, base_info, hf_tokenizer = load_all(out)
    texts = [tokenizer.kmer_text(window, seed=seed) for window, seed in zip(windows, seeds)]
    batch = hf_tokenizer(texts, return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"].numpy(), batch["attention_mask"].numpy()
    for row, (window, seed) in enumerate(zip(windows, seeds)):
        expected = [2, *tokenizer.encode(window, seed=seed).tolist(), 3]
        assert ids[row, : len(expected)].tolist() == expected and mask[row].sum() == len(expected)
        assert (ids[row, len(expected):] == 0).all()
    assert mask.min() == 0, "the batch should exercise padding"
    with torch.no_grad():
        logits = mlm(**batch).logits.numpy()
        base_out = base(**batch)
    reference = flax_outputs(config, params, ids, mask, batch["token_type_ids"].numpy())
    valid = mask.astype(bool)
    gaps = {
        "mlm_logits": float(np.abs(logits - reference["mlm_logits"])[valid].max()),
        "hidden_states": float(np.abs(base_out.last_hidden_state.numpy() - reference["hidden_states"])[valid].max()),
        "pooled": float(np.abs(base_out.pooler_output.numpy() - reference["pooled"]).max()),
    }
    print(f"\nparity max-abs (vocab {config.vocab_size:,}, tokens {ids.shape}): {gaps}")
    scale = float(np.abs(reference["mlm_logits"]).max())
    assert scale > 0.5, "logits too small for the tolerance to mean anything"
    assert max(gaps.values()) < TOLERANCE, gaps
    return mlm, mlm_info, base, base_info, hf_tokenizer


def assert_loading_info(out, mlm, mlm_info, base, base_info):
    for info in (mlm_info, base_info):
        assert info["missing_keys"] == set() and info["mismatched_keys"] == set() and not info["error_msgs"]
    # One file serves both heads: each class leaves exactly the other head's weights unused.
    assert set(mlm_info["unexpected_keys"]) == POOLER_KEYS
    assert set(base_info["unexpected_keys"]) == MLM_HEAD_KEYS
    assert type(base).__name__ == "BertModel"
    with safe_open(str(out / "model.safetensors"), framework="np") as handle:
        stored = set(handle.keys())
    used = set(mlm.state_dict()) | {f"bert.{name}" for name in base.state_dict()}
    assert stored <= used
    head = mlm.cls.predictions
    assert head.decoder.weight.data_ptr() == mlm.bert.embeddings.word_embeddings.weight.data_ptr()
    assert torch.equal(head.decoder.bias, head.bias)


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    tokenizer, config, params = small_setup()
    out = export.export_to_hf(params, config, tokenizer, tmp_path_factory.mktemp("hf") / "small")
    return out, tokenizer, config, params


def test_small_model_loads_and_matches_flax_on_chr22(small_export, chr22_fasta):
    out, tokenizer, config, params = small_export
    windows = chr22_windows(chr22_fasta, [126, 90, 126, 41])  # 124 tokens + [CLS]/[SEP] = 126 <= 128 positions
    mlm, mlm_info, base, base_info, hf_tokenizer = check_parity(out, tokenizer, config, params, windows,
                                                                seeds=[0, 1, 2, 3])
    assert_loading_info(out, mlm, mlm_info, base, base_info)
    # Fixed-k text and [MASK] go through AutoTokenizer unchanged as well.
    for k in (3, 4, 5):
        text = tokenizer.kmer_text(windows[1], k=k)
        assert hf_tokenizer(text)["input_ids"] == [2, *tokenizer.encode(windows[1], k=k).tolist(), 3]
    kmers = tokenizer.kmer_text(windows[3], seed=9).split()
    kmers[5] = "[MASK]"
    assert hf_tokenizer(" ".join(kmers))["input_ids"][6] == MASK_ID


def test_full_vocabulary_model_matches_flax(tmp_path, chr22_fasta):
    tokenizer = KmerTokenizer(3, 8)
    config = model_lib.BertConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                  max_position_embeddings=160)
    assert config.vocab_size == tokenizer.vocab_size == 87_365
    params = perturbed_params(config, seed=1)
    out = export.export_to_hf(params, config, tokenizer, tmp_path / "full")
    windows = chr22_windows(chr22_fasta, [160, 100, 160], first_start=500_001)
    mlm, mlm_info, base, base_info, hf_tokenizer = check_parity(out, tokenizer, config, params, windows,
                                                                seeds=[11, 12, 13])
    assert_loading_info(out, mlm, mlm_info, base, base_info)
    for k in range(3, 9):
        text = tokenizer.kmer_text(windows[0], k=k)
        assert hf_tokenizer(text)["input_ids"] == [2, *tokenizer.encode(windows[0], k=k).tolist(), 3]


def test_mlm_accuracy_hf_matches_flax(small_export, chr22_fasta):
    out, tokenizer, config, params = small_export
    rng = np.random.default_rng(0)
    windows = chr22_windows(chr22_fasta, [100] * 6, first_start=700_001)
    length, predictions = 104, 12
    input_ids = np.zeros((len(windows), length), np.int32)
    input_mask = np.zeros_like(input_ids)
    positions = np.zeros((len(windows), predictions), np.int32)
    for row, window in enumerate(windows):
        ids = [2, *tokenizer.encode(window, seed=row).tolist(), 3]
        input_ids[row, : len(ids)] = ids
        input_mask[row, : len(ids)] = 1
        positions[row] = np.sort(rng.choice(np.arange(1, len(ids) - 1), predictions, replace=False))
    true_ids = np.take_along_axis(input_ids, positions, axis=1)
    np.put_along_axis(input_ids, positions, MASK_ID, axis=1)
    weights = np.ones((len(windows), predictions), np.float32)
    weights[:, -3:] = 0.0  # padding predictions, as in the trainer's batches
    flax_logits = np.asarray(model_lib.BertForMaskedLM(config).apply(
        {"params": params}, input_ids, input_mask, np.zeros_like(input_ids), positions)["mlm_logits"])
    argmax = flax_logits.argmax(-1)
    # Random weights predict almost nothing right: make about half the targets the model's own argmax.
    labels = np.where(rng.random(true_ids.shape) < 0.5, argmax, true_ids)
    examples = {"input_ids": input_ids, "input_mask": input_mask, "masked_lm_positions": positions,
                "masked_lm_ids": labels, "masked_lm_weights": weights}
    expected = float((weights * (argmax == labels)).sum(dtype=np.float64) / weights.sum(dtype=np.float64))
    assert 0.3 < expected < 0.7
    assert mlm_accuracy_hf(out, examples, batch_size=4) == pytest.approx(expected, abs=1e-12)
    from transformers import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(str(out))
    assert mlm_accuracy_hf(model, examples, batch_size=6) == pytest.approx(expected, abs=1e-12)


def test_import_of_a_transformers_saved_model(tmp_path, chr22_fasta):
    """A BertForMaskedLM saved by transformers itself (no pooler) loads into the Flax model and matches it."""
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = KmerTokenizer(3, 4)
    torch.manual_seed(0)
    hf_model = BertForMaskedLM(BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
        intermediate_size=96, max_position_embeddings=64, attention_probs_dropout_prob=0.0)).eval()
    with torch.no_grad():
        for parameter in hf_model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    hf_model.save_pretrained(str(tmp_path / "hf"))
    tokenizer.write_vocab(tmp_path / "hf" / "vocab.txt")
    loaded = export.load_hf_pretrained(tmp_path / "hf")
    assert loaded.initialized == ("pooler",) and loaded.tokenizer.vocab == tokenizer.vocab
    assert (loaded.model_config.num_layers, loaded.model_config.num_heads) == (2, 3)
    window = chr22_windows(chr22_fasta, [60])[0]
    ids = np.array([[2, *tokenizer.encode(window, seed=4).tolist(), 3]], np.int32)
    with torch.no_grad():
        expected = hf_model(input_ids=torch.from_numpy(ids).long()).logits.numpy()
    got = flax_outputs(loaded.model_config, loaded.params, ids, np.ones_like(ids), np.zeros_like(ids))
    assert np.abs(got["mlm_logits"] - expected).max() < TOLERANCE
    # Exported again, the non-pooler weights are the ones transformers saved.
    again = export.export_to_hf(loaded.params, loaded.model_config, loaded.tokenizer, tmp_path / "again")
    reloaded = BertForMaskedLM.from_pretrained(str(again))
    for name, value in hf_model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[name]), name


@pytest.mark.slow
def test_base_size_model_matches_flax_at_512_tokens(tmp_path, chr22_fasta):
    """The real shape (12 layers, hidden 512, 8 heads, vocab 87,365) at the full 512 positions (~25 s)."""
    tokenizer = KmerTokenizer(3, 8)
    config = model_lib.BertConfig()
    params = perturbed_params(config, seed=2)
    out = export.export_to_hf(params, config, tokenizer, tmp_path / "base")
    windows = chr22_windows(chr22_fasta, [512, 300], first_start=300_001)  # 510 k-mers + [CLS]/[SEP]
    check_parity(out, tokenizer, config, params, windows, seeds=[21, 22])


def test_exported_mlm_accuracy_equals_the_trainers_final_eval(trained_workdir, trained_export):
    """Same validation examples, same masked positions: transformers' accuracy is the metrics.jsonl figure."""
    import json

    from dnavec_jax.data import load_prepared
    from dnavec_jax.training.batches import tfrecord_eval_batches

    config = json.loads((trained_workdir / "config.json").read_text())
    dataset = load_prepared(config["dataset"]["path"])
    batches = list(tfrecord_eval_batches(dataset.files("validation"), 64, dataset.metadata["seq_length"],
                                         dataset.metadata["max_predictions"], 0, 1, 10**6 // 64))
    examples = {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}
    real = examples["input_mask"].max(axis=1) > 0
    examples = {name: value[real] for name, value in examples.items()}
    assert len(examples["input_ids"]) == dataset.num_examples("validation") > 0

    rows = [json.loads(line) for line in (trained_workdir / "metrics.jsonl").read_text().splitlines()]
    final_eval = [row for row in rows if row["split"] == "eval"][-1]
    assert final_eval["step"] == 40 and final_eval["masked_tokens"] == examples["masked_lm_weights"].sum()
    accuracy = mlm_accuracy_hf(trained_export, examples)
    # Equal up to float32 ties between near-equal logits (none expected in a trained model's argmax).
    assert abs(accuracy - final_eval["accuracy"]) <= 1e-7, (accuracy, final_eval["accuracy"])
    assert 0.0 < accuracy < 1.0
