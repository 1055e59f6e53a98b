"""Hugging Face export and import: Flax params <-> a transformers BertForMaskedLM directory.

transformers 5 has no Flax classes, so the export targets the PyTorch ones. It
is written from numpy (safetensors.numpy and JSON): exporting needs neither
torch nor transformers. docs/export.md describes the directory; in short:
  config.json, model.safetensors  BertForMaskedLM (PyTorch names and layouts) plus the pooler
  vocab.txt, tokenizer_config.json, tokenization_dnavec.py, dnavec_kmers.py
                                  the export's own tokenizer (raw DNA, trust_remote_code); dnavec_kmers.py
                                  is a verbatim copy of tokenization.py
  tokenizer.json                  a guard: no tokenizer, the instruction in its load error
  modules.json, sentence_bert_config.json, config_sentence_transformers.json, 1_Pooling/config.json,
  sentence_dnavec.py              sentence-transformers: BERT + KmerMeanPooling (embed's mean)
  special_tokens_map.json, dnavec.json (k range and weights, Flax model config, step), README.md
The code and the model card template are in export_files/.

One checkpoint cannot load into both heads without a report: BertForMaskedLM has
no pooler (transformers reports bert.pooler.* as unexpected) and BertModel has no
MLM head (cls.predictions.* unexpected). Nothing is ever missing; see docs/export.md.

A fine-tuned classifier (`dnavec classify`) is exported by the same writer with
export_to_hf(classifier=ClassifierHead(...)): BertForSequenceClassification, classifier.*
added, no MLM head, the same tokenizer files, dnavec.json with a "classifier" entry
(docs/classify.md).

Name mapping (Flax path -> PyTorch name; Dense kernels are transposed):
  embeddings/{word,position,token_type}_embeddings/embedding -> bert.embeddings.*.weight
  embeddings/LayerNorm/{scale,bias}                      -> bert.embeddings.LayerNorm.{weight,bias}
  encoder/layer_N/attention/{query,key,value}           -> bert.encoder.layer.N.attention.self.*
  encoder/layer_N/attention/output                      -> ...attention.output.dense
  encoder/layer_N/attention/LayerNorm                   -> ...attention.output.LayerNorm
  encoder/layer_N/intermediate                          -> ...intermediate.dense
  encoder/layer_N/output                                -> ...output.dense
  encoder/layer_N/output_LayerNorm                      -> ...output.LayerNorm
  pooler                                                -> bert.pooler.dense
  mlm_transform, mlm_transform_LayerNorm                -> cls.predictions.transform.{dense,LayerNorm}
  mlm_bias                                              -> cls.predictions.bias
"""

from __future__ import annotations

import json
import os
import shutil
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so bf16 safetensors files load)
import numpy as np
from flax import traverse_util
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from dnavec_jax import files, tokenization
from dnavec_jax import model as model_lib
from dnavec_jax.embedding import default_k
from dnavec_jax.errors import DNAVecError, read_json_object
from dnavec_jax.tokenization import NUM_SPECIAL, KmerTokenizer

EXPORT_FORMAT = "dnavec-hf-export"
EXPORT_VERSION = 2  # 2: the export carries its own raw-DNA tokenizer and sentence-transformers modules
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
DNAVEC_FILE = "dnavec.json"
# Files every export carries for transformers / sentence-transformers remote code (docs/export.md).
EXPORT_FILES = Path(__file__).with_name("export_files")
KMERS_FILE = "dnavec_kmers.py"  # a verbatim copy of tokenization.py
TOKENIZER_MODULE = "tokenization_dnavec"
SENTENCE_MODULE = "sentence_dnavec"
POOLING_DIR = "1_Pooling"
GUARD_MESSAGE = ("not a tokenizer: this DNAVec export reads raw DNA with its own code; load it with "
                 "AutoTokenizer.from_pretrained(path, trust_remote_code=True) (see its README.md)")

# Shape-defining settings: an imported checkpoint must agree on these with a given model config.
_SHAPE_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size")
# Names a Hugging Face BERT checkpoint may hold that our model does not use.
# BertForPreTraining's next-sentence head; BertForSequenceClassification's head (our classifier exports:
# their encoder loads as a pretrained model, e.g. for `dnavec embed`; `dnavec predict` reads the head).
_IGNORED_HF_PREFIXES = ("cls.seq_relationship.", "classifier.")
_IGNORED_HF_SUFFIXES = (".position_ids", ".token_type_ids")  # old persistent buffers
_DECODER_WEIGHT = "cls.predictions.decoder.weight"
_DECODER_BIAS = "cls.predictions.decoder.bias"
# Parameters with one row per vocabulary id: padded_vocab_size rows in Flax, vocab_size in the export.
VOCAB_ROW_PATHS = frozenset({"embeddings/word_embeddings/embedding", "mlm_bias"})
# Parts load_hf_pretrained may initialise afresh when a checkpoint lacks them.
_PART_PREFIXES = {"pooler": ("pooler",), "mlm_head": ("mlm_transform", "mlm_transform_LayerNorm", "mlm_bias")}


# ---- names ----------------------------------------------------------------

def _dense(flax_path: str, hf_name: str) -> list[tuple[str, str, bool]]:
    return [(f"{flax_path}/kernel", f"{hf_name}.weight", True), (f"{flax_path}/bias", f"{hf_name}.bias", False)]


def _layer_norm(flax_path: str, hf_name: str) -> list[tuple[str, str, bool]]:
    return [(f"{flax_path}/scale", f"{hf_name}.weight", False), (f"{flax_path}/bias", f"{hf_name}.bias", False)]


def name_table(num_layers: int) -> list[tuple[str, str, bool]]:
    """(Flax path joined by '/', PyTorch name, transpose?) for every parameter, in a stable order."""
    table = [
        (f"embeddings/{kind}_embeddings/embedding", f"bert.embeddings.{kind}_embeddings.weight", False)
        for kind in ("word", "position", "token_type")
    ]
    table += _layer_norm("embeddings/LayerNorm", "bert.embeddings.LayerNorm")
    for n in range(num_layers):
        flax, hf = f"encoder/layer_{n}", f"bert.encoder.layer.{n}"
        for proj in ("query", "key", "value"):
            table += _dense(f"{flax}/attention/{proj}", f"{hf}.attention.self.{proj}")
        table += _dense(f"{flax}/attention/output", f"{hf}.attention.output.dense")
        table += _layer_norm(f"{flax}/attention/LayerNorm", f"{hf}.attention.output.LayerNorm")
        table += _dense(f"{flax}/intermediate", f"{hf}.intermediate.dense")
        table += _dense(f"{flax}/output", f"{hf}.output.dense")
        table += _layer_norm(f"{flax}/output_LayerNorm", f"{hf}.output.LayerNorm")
    table += _dense("pooler", "bert.pooler.dense")
    table += _dense("mlm_transform", "cls.predictions.transform.dense")
    table += _layer_norm("mlm_transform_LayerNorm", "cls.predictions.transform.LayerNorm")
    table.append(("mlm_bias", "cls.predictions.bias", False))
    return table


def expected_param_shapes(model_config: model_lib.BertConfig) -> dict[str, tuple[int, ...]]:
    """Flax path -> shape of every parameter of model.BertForMaskedLM (traced, nothing allocated)."""
    abstract = jax.eval_shape(lambda: model_lib.init_params(model_config, jax.random.key(0)))
    shapes = {"/".join(path): tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(abstract).items()}
    table_paths = {flax for flax, _, _ in name_table(model_config.num_layers)}
    if table_paths != set(shapes):  # model.py changed without this table: a bug, not a user mistake
        raise AssertionError(f"hf_export name table out of date: {sorted(table_paths ^ set(shapes))[:5]}")
    return shapes


def _flatten(params: Mapping) -> dict[str, Any]:
    if "params" in params and len(params) == 1:
        params = params["params"]
    return {"/".join(path): leaf for path, leaf in traverse_util.flatten_dict(_as_dict(params)).items()}


def _as_dict(tree):
    return {key: _as_dict(value) for key, value in tree.items()} if isinstance(tree, Mapping) else tree


def _check_params(flat: Mapping[str, Any], model_config: model_lib.BertConfig) -> None:
    shapes = expected_param_shapes(model_config)
    missing = sorted(set(shapes) - set(flat))
    unexpected = sorted(set(flat) - set(shapes))
    if missing or unexpected:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}" if unexpected else "",
        ) if part)
        raise DNAVecError(f"parameters do not match the model config ({detail})")
    for path, shape in shapes.items():
        if tuple(np.shape(flat[path])) != shape:
            raise DNAVecError(
                f"parameter {path} has shape {tuple(np.shape(flat[path]))}, the model config needs {shape} "
                "(incompatible model config)"
            )


# ---- Flax <-> PyTorch state ------------------------------------------------

def flax_to_hf_state(params: Mapping, model_config: model_lib.BertConfig) -> dict[str, np.ndarray]:
    """PyTorch state dict (numpy, float32, C-contiguous) of BertForMaskedLM plus the BertModel pooler.

    The tied decoder weight and bias are not stored (transformers ties them on load). The
    vocabulary rows are trimmed to the real vocab_size (the Flax model pads them; model.py).
    """
    flat = _flatten(params)
    _check_params(flat, model_config)
    state = {}
    for flax_path, hf_name, transpose in name_table(model_config.num_layers):
        array = np.asarray(jax.device_get(flat[flax_path]), dtype=np.float32)
        if flax_path in VOCAB_ROW_PATHS:
            array = array[: model_config.vocab_size]
        state[hf_name] = np.ascontiguousarray(array.T if transpose else array)
    return state


def hf_state_to_flax(state: Mapping[str, np.ndarray], model_config: model_lib.BertConfig) -> dict:
    """Nested Flax params (numpy float32) from a complete PyTorch-named state; inverse of flax_to_hf_state
    (the vocabulary rows are padded with zeros to the model's padded_vocab_size)."""
    shapes = expected_param_shapes(model_config)
    flat = {}
    for flax_path, hf_name, transpose in name_table(model_config.num_layers):
        array = np.asarray(state[hf_name], dtype=np.float32)
        array = np.ascontiguousarray(array.T if transpose else array)
        wanted = shapes[flax_path]
        if flax_path in VOCAB_ROW_PATHS:
            wanted = (model_config.vocab_size, *wanted[1:])
        if array.shape != wanted:
            raise DNAVecError(
                f"{hf_name} has shape {tuple(np.shape(state[hf_name]))}, the config needs "
                f"{wanted[::-1] if transpose else wanted} (incompatible config)"
            )
        if flax_path in VOCAB_ROW_PATHS:
            array = pad_vocab_rows(array, model_config)
        flat[flax_path] = array
    return traverse_util.unflatten_dict({tuple(path.split("/")): value for path, value in flat.items()})


def pad_vocab_rows(array: np.ndarray, model_config: model_lib.BertConfig) -> np.ndarray:
    """(vocab_size, ...) -> (padded_vocab_size, ...) with zero rows: ids the model never sees or predicts."""
    padding = [(0, model_config.padded_vocab_size - array.shape[0])] + [(0, 0)] * (array.ndim - 1)
    return np.pad(array, padding)


# ---- config and tokenizer files -------------------------------------------

def hf_config_dict(model_config: model_lib.BertConfig) -> dict[str, Any]:
    """config.json for transformers' BertForMaskedLM (sizes from our model config)."""
    return {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": model_config.vocab_size,
        "hidden_size": model_config.hidden_size,
        "num_hidden_layers": model_config.num_layers,
        "num_attention_heads": model_config.num_heads,
        "intermediate_size": model_config.intermediate_size,
        "hidden_act": "gelu",  # exact erf GELU, as model.gelu
        "hidden_dropout_prob": model_config.hidden_dropout_rate,
        # jax.nn.dot_product_attention has no dropout on attention probabilities.
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": model_config.max_position_embeddings,
        "type_vocab_size": model_config.type_vocab_size,
        "initializer_range": model_config.initializer_range,
        "layer_norm_eps": model_config.layer_norm_eps,
        "pad_token_id": 0,
        "tie_word_embeddings": True,
        "is_decoder": False,
        "add_cross_attention": False,
        "classifier_dropout": None,
        "use_cache": False,
        "dtype": "float32",
    }


def model_config_from_hf(hf_config: Mapping[str, Any], base: model_lib.BertConfig | None = None,
                         source: str = "config.json") -> model_lib.BertConfig:
    """Our BertConfig from a transformers BERT config.json dict; DNAVecError if the model cannot be ours.

    With `base`, the shape settings must agree with it and the rest (dtype, dropout,
    attention implementation, remat) is taken from it.
    """
    model_type = hf_config.get("model_type")
    if model_type != "bert":
        raise DNAVecError(f"{source}: model_type is {model_type!r}; only BERT (model_type 'bert') can be loaded")
    checks = (
        ("hidden_act", "gelu", "our model uses the exact erf GELU"),
        ("position_embedding_type", "absolute", "our model has absolute position embeddings only"),
        ("is_decoder", False, "our model is a bidirectional encoder"),
        ("add_cross_attention", False, "our model has no cross-attention"),
        ("tie_word_embeddings", True, "our MLM decoder is tied to the word embeddings"),
    )
    for key, wanted, why in checks:
        if key in hf_config and hf_config[key] != wanted:
            raise DNAVecError(f"{source}: {key} is {hf_config[key]!r}, needs {wanted!r} ({why})")
    try:
        values = {
            "vocab_size": int(hf_config["vocab_size"]),
            "hidden_size": int(hf_config["hidden_size"]),
            "num_layers": int(hf_config["num_hidden_layers"]),
            "num_heads": int(hf_config["num_attention_heads"]),
            "intermediate_size": int(hf_config["intermediate_size"]),
            "max_position_embeddings": int(hf_config.get("max_position_embeddings", 512)),
            "type_vocab_size": int(hf_config.get("type_vocab_size", 2)),
            "layer_norm_eps": float(hf_config.get("layer_norm_eps", 1e-12)),
        }
    except KeyError as error:
        raise DNAVecError(f"{source}: missing setting {error.args[0]!r}") from None
    except (TypeError, ValueError) as error:
        raise DNAVecError(f"{source}: bad value ({error})") from None
    if base is not None:
        for name in _SHAPE_FIELDS:
            if values[name] != getattr(base, name):
                raise DNAVecError(
                    f"{source}: {name} is {values[name]}, the model config has {getattr(base, name)} "
                    "(incompatible config)"
                )
        if values["layer_norm_eps"] != base.layer_norm_eps:
            raise DNAVecError(f"{source}: layer_norm_eps is {values['layer_norm_eps']}, "
                              f"the model config has {base.layer_norm_eps} (incompatible config)")
        return base
    values["hidden_dropout_rate"] = float(hf_config.get("hidden_dropout_prob", 0.1))
    values["initializer_range"] = float(hf_config.get("initializer_range", 0.02))
    try:
        return model_lib.BertConfig(**values)
    except ValueError as error:
        raise DNAVecError(f"{source}: {error}") from None


def tokenizer_config_dict(tokenizer: KmerTokenizer, model_max_length: int) -> dict[str, Any]:
    """tokenizer_config.json: the export's own DNAVecTokenizer (raw DNA), reached through auto_map.

    Without trust_remote_code transformers does not ask for it: a BERT config counts as local
    code, so it falls back to tokenizer.json, which is the guard (guard_tokenizer_json).
    """
    k_weights = None if tokenizer.k_probs is None else [float(p) for p in tokenizer.k_probs]
    return {
        "tokenizer_class": "DNAVecTokenizer",
        "auto_map": {"AutoTokenizer": [f"{TOKENIZER_MODULE}.DNAVecTokenizer", None]},
        "k_min": tokenizer.k_min,
        "k_max": tokenizer.k_max,
        "k_weights": k_weights,
        "k": default_k(tokenizer),
        "seed": 0,
        "draw": 0,
        "model_max_length": model_max_length,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "clean_up_tokenization_spaces": False,
    }


def guard_tokenizer_json() -> dict[str, Any]:
    """tokenizer.json that is no tokenizer: loading it fails with the instruction (docs/export.md).

    Without it, AutoTokenizer (no trust_remote_code) fails with a message about sentencepiece; with
    a WordPiece one it would read raw DNA as [UNK]. The `tokenizers` library prints an unknown
    version string in its error, so the instruction goes there. `added_tokens` is what the slow
    tokenizer reads from this file.
    """
    return {"version": GUARD_MESSAGE, "added_tokens": []}


def special_tokens_map() -> dict[str, str]:
    return {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
            "mask_token": "[MASK]"}


def sentence_transformers_files(model_config: model_lib.BertConfig) -> dict[str, Any]:
    """The sentence-transformers files of an export: BERT, then KmerMeanPooling (dnavec embed's mean)."""
    return {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": f"{SENTENCE_MODULE}.DNAVecTransformer"},
            {"idx": 1, "name": "1", "path": POOLING_DIR, "type": f"{SENTENCE_MODULE}.KmerMeanPooling"},
        ],
        "sentence_bert_config.json": {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
            "module_output_name": "token_embeddings",
            "unpad_inputs": False,  # KmerMeanPooling reads padded input_ids
        },
        "config_sentence_transformers.json": {"model_type": "SentenceTransformer", "prompts": {},
                                              "default_prompt_name": None, "similarity_fn_name": "cosine"},
        f"{POOLING_DIR}/config.json": {"embedding_dimension": model_config.hidden_size,
                                       "first_kmer_id": NUM_SPECIAL},
    }


def kmer_tokenizer_from_export(hf_dir: str | os.PathLike) -> KmerTokenizer:
    """The KmerTokenizer of an export (k range and weights from dnavec.json, else from vocab.txt)."""
    hf_dir = Path(hf_dir)
    info = read_json_object(hf_dir / DNAVEC_FILE) if (hf_dir / DNAVEC_FILE).is_file() else {}
    settings = info.get("tokenizer")
    vocab_path = hf_dir / "vocab.txt"
    if not vocab_path.is_file():
        raise DNAVecError(f"{vocab_path}: not found (a DNAVec export has a vocab.txt)")
    vocab = vocab_path.read_text(encoding="utf-8").splitlines()
    try:
        if settings:
            tokenizer = KmerTokenizer(settings["k_min"], settings["k_max"], settings.get("k_weights"))
        else:
            if len(vocab) <= NUM_SPECIAL:
                raise ValueError("no k-mers")
            tokenizer = KmerTokenizer(len(vocab[NUM_SPECIAL]), len(vocab[-1]))
    except (ValueError, KeyError, TypeError) as error:
        raise DNAVecError(f"{vocab_path}: not a DNAVec k-mer vocabulary ({error})") from None
    if vocab != tokenizer.vocab:
        raise DNAVecError(
            f"{vocab_path}: not the DNAVec k-mer vocabulary for k {tokenizer.k_min}..{tokenizer.k_max} "
            f"({len(vocab):,} lines, expected {tokenizer.vocab_size:,})"
        )
    return tokenizer


# ---- export ----------------------------------------------------------------

class ClassifierHead(NamedTuple):
    """A fine-tuned sequence-classification head: export_to_hf(classifier=...) writes a
    BertForSequenceClassification directory instead of BertForMaskedLM (docs/classify.md)."""
    kernel: np.ndarray  # (hidden, classes), Flax layout; applied to the pooler output, as transformers does
    bias: np.ndarray  # (classes,)
    labels: Sequence[str]  # class id -> label
    info: Mapping[str, Any]  # dnavec.json "classifier": what `dnavec predict` needs to predict as classify did
    card: str = ""  # a model-card section put before the encoder's card


def export_to_hf(params: Mapping, model_config: model_lib.BertConfig, tokenizer: KmerTokenizer,
                 output_dir: str | os.PathLike, *, overwrite: bool = False, step: int | None = None,
                 train_config: Mapping[str, Any] | None = None, classifier: ClassifierHead | None = None) -> Path:
    """Writes a transformers BertForMaskedLM directory from Flax params; returns its path.

    With `classifier`, a BertForSequenceClassification directory: the same encoder names,
    tokenizer files and dnavec.json (plus its "classifier" entry), no MLM head.
    Everything is written into a temporary directory next to output_dir and renamed
    at the end, so a failure leaves no half-written export. An existing non-empty
    output_dir is refused unless overwrite.
    """
    output_dir = files.check_output_dir(output_dir, "--output_dir", overwrite)
    if tokenizer.vocab_size != model_config.vocab_size:
        raise DNAVecError(
            f"the tokenizer (k {tokenizer.k_min}..{tokenizer.k_max}) has {tokenizer.vocab_size:,} ids but "
            f"the model's vocab_size is {model_config.vocab_size:,} (incompatible config)"
        )
    state = flax_to_hf_state(params, model_config)
    hf_config = hf_config_dict(model_config)
    if classifier is not None:
        state, hf_config = classifier_state(state, classifier), classifier_config_dict(hf_config, classifier.labels)
    with files.staged_directory(output_dir, "--output_dir", overwrite) as staging:
        _write_export(staging, state, model_config, tokenizer, step, train_config, hf_config, classifier)
    return output_dir


def _write_export(directory: Path, state: dict[str, np.ndarray], model_config: model_lib.BertConfig,
                  tokenizer: KmerTokenizer, step: int | None, train_config: Mapping[str, Any] | None,
                  hf_config: Mapping[str, Any], classifier: ClassifierHead | None = None) -> None:
    _write_json(directory / "config.json", hf_config)
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    _write_shared_files(directory, model_config, tokenizer, step, train_config, classifier)


def _write_shared_files(directory: Path, model_config: model_lib.BertConfig, tokenizer: KmerTokenizer,
                        step: int | None, train_config: Mapping[str, Any] | None,
                        classifier: ClassifierHead | None) -> None:
    """What every export carries, MLM or classifier: tokenizer files, dnavec.json, model card; then file modes."""
    max_length = model_config.max_position_embeddings
    tokenizer.write_vocab(directory / "vocab.txt")
    tokenizer_config = tokenizer_config_dict(tokenizer, max_length)
    if classifier is not None:  # AutoTokenizer then gives the tokenization the classifier was evaluated with
        tokenizer_config.update(k=None, seed=int(classifier.info["seed"]), draw=0)
    _write_json(directory / "tokenizer_config.json", tokenizer_config)
    _write_json(directory / "tokenizer.json", guard_tokenizer_json())
    _write_json(directory / "special_tokens_map.json", special_tokens_map())
    # The tokenizer code runs where DNAVec is not installed: it imports the very module we tokenize with.
    shutil.copyfile(Path(tokenization.__file__), directory / KMERS_FILE)
    for name in (f"{TOKENIZER_MODULE}.py", f"{SENTENCE_MODULE}.py"):
        shutil.copyfile(EXPORT_FILES / name, directory / name)
    for name, value in sentence_transformers_files(model_config).items():
        (directory / name).parent.mkdir(exist_ok=True)
        _write_json(directory / name, value)
    k_weights = None if tokenizer.k_probs is None else [float(p) for p in tokenizer.k_probs]
    _write_json(directory / DNAVEC_FILE, {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "step": step,
        "tokenizer": {"k_min": tokenizer.k_min, "k_max": tokenizer.k_max, "k_weights": k_weights},
        "model": model_config.to_dict(),
        **({"classifier": dict(classifier.info)} if classifier is not None else {}),
    })
    card = model_card(model_config, tokenizer, step, train_config)
    (directory / "README.md").write_text(classifier_card(card, classifier) if classifier else card, encoding="utf-8")


def classifier_state(state: Mapping[str, np.ndarray], head: ClassifierHead) -> dict[str, np.ndarray]:
    """BertForSequenceClassification's state: the encoder and pooler of `state`, no MLM head, plus `classifier`."""
    kernel, bias = np.asarray(head.kernel, np.float32), np.asarray(head.bias, np.float32)
    if kernel.shape[1:] != (len(head.labels),) or bias.shape != (len(head.labels),):
        raise ValueError(f"classifier kernel {kernel.shape} / bias {bias.shape} do not fit {len(head.labels)} labels")
    out = {name: value for name, value in state.items() if not name.startswith("cls.")}
    out["classifier.weight"] = np.ascontiguousarray(kernel.T)
    out["classifier.bias"] = bias
    return out


def classifier_config_dict(hf_config: Mapping[str, Any], labels: Sequence[str]) -> dict[str, Any]:
    """config.json of a BertForSequenceClassification: the encoder's config plus the label maps."""
    return {**hf_config, "architectures": ["BertForSequenceClassification"],
            "id2label": {str(i): str(label) for i, label in enumerate(labels)},
            "label2id": {str(label): i for i, label in enumerate(labels)},
            "problem_type": "single_label_classification"}


def classifier_card(card: str, head: ClassifierHead) -> str:
    """The encoder's model card with the classifier's section first (after the YAML front matter)."""
    card = card.replace("pipeline_tag: fill-mask", "pipeline_tag: text-classification", 1)
    end = card.find("\n---\n", 4) + 5 if card.startswith("---\n") else 0
    return card[:end] + ("\n" if end else "") + head.card.rstrip() + "\n\n" + card[end:].lstrip("\n")


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def export_checkpoint(workdir: str | os.PathLike, output_dir: str | os.PathLike, step: int | None = None,
                      overwrite: bool = False) -> tuple[Path, int]:
    """`dnavec export-hf`: the training run in workdir (latest step by default) -> (output_dir, step)."""
    files.check_output_dir(output_dir, "--output_dir", overwrite)  # fail before loading a large checkpoint
    if not Path(workdir).is_dir():
        raise DNAVecError(f"--workdir {workdir}: no such directory")
    from dnavec_jax.training import checkpointing  # the trainer's module (Orbax); only this command needs it

    params, model_config, config, loaded_step = checkpointing.load_for_inference(workdir, step=step)
    tokenizer = tokenizer_from_train_config(config, source=str(Path(workdir) / "config.json"))
    path = export_to_hf(params, model_config, tokenizer, output_dir, overwrite=overwrite, step=loaded_step,
                        train_config=config)
    return path, int(loaded_step)


def export_after_training(config, workdir: str | os.PathLike, result: Mapping[str, Any]) -> Path | None:
    """run_pretrain.py's last step: a completed one-process run exports its final checkpoint to
    config.export.hf_dir (relative to the workdir; "" disables). Returns the export directory, if any."""
    from absl import logging

    export_dir = str(config.export.hf_dir)
    if not export_dir or result["preempted"]:
        return None
    if jax.process_count() > 1:
        # Orbax's checkpoint reading synchronises all processes; the export is a one-process job.
        if jax.process_index() == 0:
            logging.info("multi-process run: export with `dnavec export-hf --workdir %s --output_dir OUT`", workdir)
        return None
    target = Path(workdir) / export_dir  # an absolute hf_dir stays as it is
    output_dir, step = export_checkpoint(workdir, target, overwrite=True)
    logging.info("exported step %d as a Hugging Face model to %s", step, output_dir)
    return output_dir


def tokenizer_from_train_config(config: Mapping[str, Any], source: str = "training config") -> KmerTokenizer:
    """KmerTokenizer of a training config (config['data']['prep'] k_min, k_max and optional k_weights)."""
    try:
        prep = config["data"]["prep"]
        return KmerTokenizer(int(prep["k_min"]), int(prep["k_max"]), prep.get("k_weights"))
    except (KeyError, TypeError) as error:
        raise DNAVecError(f"{source}: no data.prep.k_min/k_max ({error})") from None
    except ValueError as error:
        raise DNAVecError(f"{source}: {error}") from None


# ---- model card ------------------------------------------------------------

def model_card(model_config: model_lib.BertConfig, tokenizer: KmerTokenizer, step: int | None,
               train_config: Mapping[str, Any] | None) -> str:
    """README.md of an export: export_files/model_card.md with this model's numbers filled in."""
    k_range = f"{tokenizer.k_min}..{tokenizer.k_max}"
    if tokenizer.k_probs is None:
        k_rule = f"k drawn uniformly from {k_range}"
    else:
        k_rule = f"k drawn from {k_range} with probabilities {[round(float(p), 4) for p in tokenizer.k_probs]}"
    data = (train_config or {}).get("data")
    if hasattr(data, "to_dict"):  # an ml_collections ConfigDict
        data = data.to_dict()
    data_text = (
        "Training data settings (from the training config):\n\n```json\n"
        + json.dumps(data, indent=2, default=str) + "\n```\n"
        if data else "The training data settings were not recorded with this export.\n"
    )
    rows = [("vocab_size", f"{model_config.vocab_size:,}"), ("hidden_size", model_config.hidden_size),
            ("num_hidden_layers", model_config.num_layers), ("num_attention_heads", model_config.num_heads),
            ("intermediate_size", model_config.intermediate_size),
            ("max_position_embeddings", model_config.max_position_embeddings),
            ("hidden_act", "gelu (exact erf)"), ("layer_norm_eps", model_config.layer_norm_eps),
            ("hidden_dropout_prob", model_config.hidden_dropout_rate), ("attention_probs_dropout_prob", 0.0)]
    positions = model_config.max_position_embeddings
    template = string.Template((EXPORT_FILES / "model_card.md").read_text(encoding="utf-8"))
    return template.substitute(
        num_layers=model_config.num_layers, hidden_size=model_config.hidden_size, k_range=k_range,
        k_min=tokenizer.k_min, k_max=tokenizer.k_max, k_min_minus_1=tokenizer.k_min - 1, k_rule=k_rule,
        step_text=f"training step {step}" if step is not None else "an unrecorded training step",
        default_k=default_k(tokenizer),
        vocab_size=f"{tokenizer.vocab_size:,}", positions=f"{positions:,}", max_tokens=f"{positions - 2:,}",
        max_bases=f"{positions - 3 + default_k(tokenizer):,}",
        data_text=data_text, table="\n".join(f"| {name} | {value} |" for name, value in rows),
        pooling_dir=POOLING_DIR,
    )


# ---- import ------------------------------------------------------------------

class HFImport(NamedTuple):
    params: dict  # nested Flax params, numpy float32, as model.init_params produces
    model_config: model_lib.BertConfig
    tokenizer: KmerTokenizer | None  # None if the directory has no DNAVec k-mer vocab.txt
    initialized: tuple[str, ...]  # parts the checkpoint lacked, freshly initialised ("pooler", "mlm_head")


def read_hf_state(hf_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of model.safetensors (or its sharded index) as numpy arrays; no pickle is ever read."""
    hf_dir = Path(hf_dir)
    single, index = hf_dir / WEIGHTS_NAME, hf_dir / WEIGHTS_INDEX_NAME
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = read_json_object(index).get("weight_map", {})
        files = [hf_dir / name for name in sorted(set(weight_map.values()))]
    elif any((hf_dir / name).exists() for name in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")):
        raise DNAVecError(f"{hf_dir}: only model.safetensors weights can be loaded (no pickle); "
                          "re-save the model with save_pretrained(safe_serialization=True)")
    else:
        raise DNAVecError(f"{hf_dir}: no {WEIGHTS_NAME} found")
    state = {}
    for path in files:
        try:
            with safe_open(str(path), framework="np") as handle:
                for key in handle.keys():
                    state[key] = handle.get_tensor(key)
        except (OSError, ValueError, TypeError, SafetensorError) as error:
            raise DNAVecError(f"{path}: cannot read safetensors weights ({error})") from None
    return state


def _canonical_hf_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """BertModel-only names gain the 'bert.' prefix; old LayerNorm gamma/beta become weight/bias."""
    out = {}
    for name, value in state.items():
        if name.startswith(("embeddings.", "encoder.", "pooler.")):
            name = "bert." + name
        if ".LayerNorm." in name and name.endswith((".gamma", ".beta")):
            name = name.rsplit(".", 1)[0] + (".weight" if name.endswith(".gamma") else ".bias")
        out[name] = value
    return out


def load_hf_pretrained(hf_dir: str | os.PathLike, model_config: model_lib.BertConfig | None = None, *,
                       allow_init: Sequence[str] = ("pooler",), seed: int = 0) -> HFImport:
    """A Hugging Face BERT directory (ours or any of matching shape) -> Flax params.

    model_config: if given, the checkpoint must have its shapes (to continue a
      training run's pretraining from it); otherwise the config comes from config.json.
    allow_init: parts a checkpoint may lack and that are then initialised as in
      model.init_params(seed): "pooler" (transformers' BertForMaskedLM.save_pretrained
      has none), "mlm_head" (a BertModel checkpoint). Anything else missing is an error.
    The tied decoder (cls.predictions.decoder.*) is accepted only if equal to the word
    embeddings and cls.predictions.bias; the NSP head and position_ids buffers are ignored.
    """
    unknown_parts = sorted(set(allow_init) - set(_PART_PREFIXES))
    if unknown_parts:
        raise ValueError(f"allow_init: unknown part(s) {unknown_parts}; known: {sorted(_PART_PREFIXES)}")
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise DNAVecError(f"{hf_dir}: no such directory")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise DNAVecError(f"{config_path}: not found (a Hugging Face model directory has a config.json)")
    model_config = model_config_from_hf(read_json_object(config_path), model_config, source=str(config_path))
    state = _canonical_hf_names(read_hf_state(hf_dir))

    decoder_weight, decoder_bias = state.pop(_DECODER_WEIGHT, None), state.pop(_DECODER_BIAS, None)
    if decoder_bias is not None:
        if "cls.predictions.bias" not in state:
            state["cls.predictions.bias"] = decoder_bias
        elif not np.array_equal(decoder_bias, state["cls.predictions.bias"]):
            raise DNAVecError(f"{hf_dir}: {_DECODER_BIAS} differs from cls.predictions.bias (untied decoder bias)")
    if decoder_weight is not None:
        word = state.get("bert.embeddings.word_embeddings.weight")
        if word is None or not np.array_equal(decoder_weight, word):
            raise DNAVecError(f"{hf_dir}: {_DECODER_WEIGHT} differs from the word embeddings; our MLM decoder "
                              "is tied to them (incompatible checkpoint)")

    table = name_table(model_config.num_layers)
    known = {hf for _, hf, _ in table}
    unexpected = sorted(name for name in state if name not in known
                        and not name.startswith(_IGNORED_HF_PREFIXES) and not name.endswith(_IGNORED_HF_SUFFIXES))
    if unexpected:
        raise DNAVecError(f"{hf_dir}: weights our model does not have: {', '.join(unexpected[:3])}"
                          f"{' ...' if len(unexpected) > 3 else ''} (incompatible checkpoint)")

    missing = [(flax, hf) for flax, hf, _ in table if hf not in state]
    initialized = []
    for part, prefixes in _PART_PREFIXES.items():
        part_missing = [flax for flax, _ in missing if flax.split("/")[0] in prefixes]
        if part_missing and part in allow_init:
            initialized.append(part)
    fill = {flax for flax, _ in missing if any(flax.split("/")[0] in _PART_PREFIXES[p] for p in initialized)}
    still_missing = [hf for flax, hf in missing if flax not in fill]
    if still_missing:
        raise DNAVecError(f"{hf_dir}: weights missing: {', '.join(still_missing[:3])}"
                          f"{' ...' if len(still_missing) > 3 else ''}"
                          + (" (a BertModel checkpoint has no MLM head: allow_init=('pooler', 'mlm_head') "
                             "starts it fresh)" if any(n.startswith("cls.") for n in still_missing) else ""))
    if fill:
        fresh = _flatten(jax.device_get(model_lib.init_params(model_config, jax.random.key(seed))))
        by_flax = {flax: (hf, transpose) for flax, hf, transpose in table}
        for flax in fill:
            hf, transpose = by_flax[flax]
            array = np.asarray(fresh[flax], dtype=np.float32)
            if flax in VOCAB_ROW_PATHS:
                array = array[: model_config.vocab_size]
            state[hf] = array.T if transpose else array

    params = hf_state_to_flax(state, model_config)
    tokenizer = None
    if (hf_dir / "vocab.txt").is_file():
        try:
            tokenizer = kmer_tokenizer_from_export(hf_dir)
        except DNAVecError:
            tokenizer = None  # a BERT of matching shape with some other vocabulary
    if tokenizer is not None and tokenizer.vocab_size != model_config.vocab_size:
        raise DNAVecError(f"{hf_dir}: vocab.txt has {tokenizer.vocab_size:,} tokens, config.json vocab_size is "
                          f"{model_config.vocab_size:,} (incompatible config)")
    return HFImport(params, model_config, tokenizer, tuple(initialized))


# ---- evaluation with transformers -------------------------------------------

def mlm_accuracy_hf(model_or_dir, examples: Mapping[str, np.ndarray], batch_size: int = 16) -> float:
    """MLM accuracy of a transformers BertForMaskedLM: sum(w * (argmax == id)) / sum(w).

    examples: input_ids, input_mask, masked_lm_positions, masked_lm_ids, masked_lm_weights
    (and optionally segment_ids), numpy arrays with a leading example axis, as the
    trainer's eval batches. model_or_dir: a loaded BertForMaskedLM or an export
    directory. Needs torch. The MLM head runs only at the masked positions, as in
    the Flax model; logits are computed in float32.
    """
    import torch

    if isinstance(model_or_dir, (str, os.PathLike)):
        from transformers import BertForMaskedLM

        model = BertForMaskedLM.from_pretrained(str(model_or_dir), dtype=torch.float32)
    else:
        model = model_or_dir
    model.eval()
    names = ("input_ids", "input_mask", "masked_lm_positions", "masked_lm_ids", "masked_lm_weights")
    missing = [name for name in names if name not in examples]
    if missing:
        raise ValueError(f"examples lack {missing}")
    arrays = {name: np.asarray(value) for name, value in examples.items()}
    total = arrays["input_ids"].shape[0]
    correct = weight = 0.0
    with torch.no_grad():
        for start in range(0, total, batch_size):
            batch = {name: torch.from_numpy(np.ascontiguousarray(value[start:start + batch_size]))
                     for name, value in arrays.items()}
            segment = batch.get("segment_ids")
            hidden = model.bert(
                input_ids=batch["input_ids"].long(),
                attention_mask=batch["input_mask"].long(),
                token_type_ids=None if segment is None else segment.long(),
            ).last_hidden_state
            positions = batch["masked_lm_positions"].long()
            picked = torch.gather(hidden, 1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
            logits = model.cls(picked.float())
            hits = (logits.argmax(-1) == batch["masked_lm_ids"].long()).double()
            weights = batch["masked_lm_weights"].double()
            correct += float((hits * weights).sum())
            weight += float(weights.sum())
    return correct / weight if weight > 0 else float("nan")
