"""Writing an export: Flax params -> a transformers BertForMaskedLM (or, with a ClassifierHead,
BertForSequenceClassification) directory, from numpy: neither torch nor transformers is needed.

export_to_hf writes into a staging directory and renames it into place (files.staged_directory);
export_checkpoint exports a training run's checkpoint (`dnavec export-hf`). Every export also
carries the raw-DNA tokenizer code, sentence-transformers modules, dnavec.json and a model card
(docs/export.md; the code and the card template are in dnavec_jax/export_files/).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from safetensors.numpy import save_file

from dnavec_jax import files, tokenization
from dnavec_jax import model as model_lib
from dnavec_jax.errors import DNAVecError
from dnavec_jax.export.card import EXPORT_FILES, classifier_card, model_card
from dnavec_jax.export.loader import tokenizer_from_train_config
from dnavec_jax.export.names import (
    CLASSIFIER_ARCHITECTURES,
    DNAVEC_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    KMERS_FILE,
    MEAN_CLASSIFIER,
    MEAN_CLASSIFIER_MODEL_TYPE,
    MODELING_MODULE,
    POOLING_DIR,
    SENTENCE_MODULE,
    TOKENIZER_MODULE,
    WEIGHTS_NAME,
    ClassifierHead,
    default_k,
    flax_to_hf_state,
    hf_config_dict,
)
from dnavec_jax.tokenization import NUM_SPECIAL, KmerTokenizer
from dnavec_jax.training import checkpointing, metrics

GUARD_MESSAGE = ("not a tokenizer: this DNAVec export reads raw DNA with its own code; load it with "
                 "AutoTokenizer.from_pretrained(path, trust_remote_code=True) (see its README.md)")


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


def export_to_hf(params: Mapping, model_config: model_lib.BertConfig, tokenizer: KmerTokenizer,
                 output_dir: str | os.PathLike, *, overwrite: bool = False, step: int | None = None,
                 train_config: Mapping[str, Any] | None = None, classifier: ClassifierHead | None = None,
                 evaluation: Mapping[str, float] | None = None) -> Path:
    """Writes a transformers BertForMaskedLM directory from Flax params; returns its path.

    With `classifier`, a BertForSequenceClassification directory: the same encoder names,
    tokenizer files and dnavec.json (plus its "classifier" entry), no MLM head. `evaluation`:
    the run's eval row at `step` (metrics.jsonl), shown in the model card with its ceilings.
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
        state = classifier_state(state, classifier)
        hf_config = classifier_config_dict(hf_config, classifier.labels, classifier.pooling)
    with files.staged_directory(output_dir, "--output_dir", overwrite) as staging:
        _write_export(staging, state, model_config, tokenizer, step, train_config, hf_config, classifier, evaluation)
    return output_dir


def _write_export(directory: Path, state: dict[str, np.ndarray], model_config: model_lib.BertConfig,
                  tokenizer: KmerTokenizer, step: int | None, train_config: Mapping[str, Any] | None,
                  hf_config: Mapping[str, Any], classifier: ClassifierHead | None = None,
                  evaluation: Mapping[str, float] | None = None) -> None:
    _write_json(directory / "config.json", hf_config)
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    _write_shared_files(directory, model_config, tokenizer, step, train_config, classifier, evaluation)


def _write_shared_files(directory: Path, model_config: model_lib.BertConfig, tokenizer: KmerTokenizer,
                        step: int | None, train_config: Mapping[str, Any] | None,
                        classifier: ClassifierHead | None, evaluation: Mapping[str, float] | None = None) -> None:
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
    modules = [TOKENIZER_MODULE, SENTENCE_MODULE]
    if classifier is not None and classifier.pooling == "mean":
        modules.append(MODELING_MODULE)
    for name in modules:
        shutil.copyfile(EXPORT_FILES / f"{name}.py", directory / f"{name}.py")
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
    card = model_card(model_config, tokenizer, step, train_config, evaluation)
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


def classifier_config_dict(hf_config: Mapping[str, Any], labels: Sequence[str], pooling: str) -> dict[str, Any]:
    """config.json of a sequence classifier: the encoder's config plus the label maps; pooling "mean" names
    the export's own class (modeling_dnavec.py) under its own model_type, "cls" BertForSequenceClassification."""
    config = {**hf_config, "architectures": [CLASSIFIER_ARCHITECTURES[pooling]],
              "id2label": {str(i): str(label) for i, label in enumerate(labels)},
              "label2id": {str(label): i for i, label in enumerate(labels)},
              "problem_type": "single_label_classification"}
    if pooling == "mean":
        config.update(model_type=MEAN_CLASSIFIER_MODEL_TYPE, auto_map={
            "AutoConfig": f"{MODELING_MODULE}.DNAVecBertConfig",
            "AutoModelForSequenceClassification": f"{MODELING_MODULE}.{MEAN_CLASSIFIER}"})
    return config


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def export_checkpoint(workdir: str | os.PathLike, output_dir: str | os.PathLike, step: int | None = None,
                      overwrite: bool = False) -> tuple[Path, int]:
    """`dnavec export-hf`: the training run in workdir (latest step by default) -> (output_dir, step)."""
    files.check_output_dir(output_dir, "--output_dir", overwrite)  # fail before loading a large checkpoint
    if not Path(workdir).is_dir():
        raise DNAVecError(f"--workdir {workdir}: no such directory")
    params, model_config, config, loaded_step = checkpointing.load_for_inference(workdir, step=step)
    tokenizer = tokenizer_from_train_config(config, source=str(Path(workdir) / "config.json"))
    path = export_to_hf(params, model_config, tokenizer, output_dir, overwrite=overwrite, step=loaded_step,
                        train_config=config, evaluation=metrics.eval_row(workdir, int(loaded_step)))
    return path, int(loaded_step)


def export_after_training(hf_dir: str, workdir: str | os.PathLike, result: Mapping[str, Any]) -> Path | None:
    """run_pretrain.py's last step: a completed one-process run exports its final checkpoint to
    hf_dir (the run's export.hf_dir, relative to the workdir; "" disables). Returns the export directory, if any."""
    export_dir = str(hf_dir)
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
