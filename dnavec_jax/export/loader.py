"""Reading an export (ours, or any Hugging Face BERT of matching shape) back into Flax params.

load_hf_pretrained reads model.safetensors (never a pickle) and config.json, accepts a tied
decoder only if it is tied, ignores the NSP head and old buffers, and may initialise a missing
pooler or MLM head (allow_init). BertForMaskedLM has no pooler and BertModel no MLM head, so one
checkpoint cannot load into both without a report; docs/export.md explains.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so bf16 safetensors files load)
import numpy as np
from safetensors import SafetensorError, safe_open

from dnavec_jax import model as model_lib
from dnavec_jax.errors import DNAVecError, read_json_object
from dnavec_jax.export.names import (
    DNAVEC_FILE,
    VOCAB_ROW_PATHS,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    flatten_params,
    hf_state_to_flax,
    model_config_from_hf,
    name_table,
)
from dnavec_jax.tokenization import NUM_SPECIAL, KmerTokenizer

# Names a Hugging Face BERT checkpoint may hold that our model does not use.
# BertForPreTraining's next-sentence head; BertForSequenceClassification's head (our classifier exports:
# their encoder loads as a pretrained model, e.g. for `dnavec embed`; `dnavec predict` reads the head).
_IGNORED_HF_PREFIXES = ("cls.seq_relationship.", "classifier.")
_IGNORED_HF_SUFFIXES = (".position_ids", ".token_type_ids")  # old persistent buffers
_DECODER_WEIGHT = "cls.predictions.decoder.weight"
_DECODER_BIAS = "cls.predictions.decoder.bias"
# Parts load_hf_pretrained may initialise afresh when a checkpoint lacks them.
_PART_PREFIXES = {"pooler": ("pooler",), "mlm_head": ("mlm_transform", "mlm_transform_LayerNorm", "mlm_bias")}


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


def tokenizer_from_train_config(config: Mapping[str, Any], source: str = "training config") -> KmerTokenizer:
    """KmerTokenizer of a training config (config['data']['prep'] k_min, k_max and optional k_weights)."""
    try:
        prep = config["data"]["prep"]
        return KmerTokenizer(int(prep["k_min"]), int(prep["k_max"]), prep.get("k_weights"))
    except (KeyError, TypeError) as error:
        raise DNAVecError(f"{source}: no data.prep.k_min/k_max ({error})") from None
    except ValueError as error:
        raise DNAVecError(f"{source}: {error}") from None


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
        fresh = flatten_params(jax.device_get(model_lib.init_params(model_config, jax.random.key(seed))))
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
