"""What an export is called and holds: file names, Flax <-> PyTorch parameter names, config.json.

name_table maps every Flax parameter path to its transformers BertForMaskedLM name (Dense kernels
are transposed); flax_to_hf_state / hf_state_to_flax convert whole states, trimming or padding the
vocabulary rows (model.py pads them). hf_config_dict / model_config_from_hf convert the config.
docs/export.md has the table and the directory layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import traverse_util

from dnavec_jax import model as model_lib
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tokenization import KmerTokenizer
from dnavec_jax.training.checkpointing import MODEL_SHAPE_FIELDS

EXPORT_FORMAT = "dnavec-hf-export"
EXPORT_VERSION = 2  # 2: the export carries its own raw-DNA tokenizer and sentence-transformers modules
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
DNAVEC_FILE = "dnavec.json"
KMERS_FILE = "dnavec_kmers.py"  # a verbatim copy of tokenization.py
TOKENIZER_MODULE = "tokenization_dnavec"
SENTENCE_MODULE = "sentence_dnavec"
POOLING_DIR = "1_Pooling"
# A classifier whose pooler reads the mean of the k-mer states: the export's own model class (remote code).
MODELING_MODULE = "modeling_dnavec"
MEAN_CLASSIFIER = "DNAVecBertForSequenceClassification"
MEAN_CLASSIFIER_MODEL_TYPE = "dnavec_bert"  # not "bert": without trust_remote_code, transformers stops
# The classifier's model class by what its pooler reads ("cls": transformers' own).
CLASSIFIER_ARCHITECTURES = {"mean": MEAN_CLASSIFIER, "cls": "BertForSequenceClassification"}
LEGACY_POOLING = "cls"  # of a classifier whose dnavec.json names none (written before the pooling setting)
BERT_MODEL_TYPES = ("bert", MEAN_CLASSIFIER_MODEL_TYPE)
# Parameters with one row per vocabulary id: padded_vocab_size rows in Flax, vocab_size in the export.
VOCAB_ROW_PATHS = frozenset({"embeddings/word_embeddings/embedding", "mlm_bias"})


def default_k(tokenizer: KmerTokenizer) -> int:
    """embed's default k, and the exported tokenizer's: the middle of the k range, rounded down.

    Measured (docs/outputs.md, scripts/compare_embed_tokenizations.py): with the demo model
    (k 3..6), fixed k=4 and k=5 gave the best mean vectors on the planted-motif control (tied
    within the spread), better than k=3 or 6, one random-k draw or 16 draws averaged.
    """
    return (tokenizer.k_min + tokenizer.k_max) // 2


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
        raise AssertionError(f"export name table out of date: {sorted(table_paths ^ set(shapes))[:5]}")
    return shapes


def flatten_params(params: Mapping) -> dict[str, Any]:
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


def flax_to_hf_state(params: Mapping, model_config: model_lib.BertConfig) -> dict[str, np.ndarray]:
    """PyTorch state dict (numpy, float32, C-contiguous) of BertForMaskedLM plus the BertModel pooler.

    The tied decoder weight and bias are not stored (transformers ties them on load). The
    vocabulary rows are trimmed to the real vocab_size (the Flax model pads them; model.py).
    """
    flat = flatten_params(params)
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
    if model_type not in BERT_MODEL_TYPES:
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
        for name in MODEL_SHAPE_FIELDS:
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


class ClassifierHead(NamedTuple):
    """A fine-tuned sequence-classification head: export_to_hf(classifier=...) writes a sequence classifier
    (BertForSequenceClassification, or with info["pooling"] "mean" MEAN_CLASSIFIER) instead of
    BertForMaskedLM (docs/classify.md)."""
    kernel: np.ndarray  # (hidden, classes), Flax layout; applied to the pooler output, as transformers does
    bias: np.ndarray  # (classes,)
    labels: Sequence[str]  # class id -> label
    info: Mapping[str, Any]  # dnavec.json "classifier": what `dnavec predict` needs to predict as classify did
    card: str = ""  # a model-card section put before the encoder's card

    @property
    def pooling(self) -> str:
        """What the pooler reads (a CLASSIFIER_ARCHITECTURES key)."""
        return self.info.get("pooling", LEGACY_POOLING)
