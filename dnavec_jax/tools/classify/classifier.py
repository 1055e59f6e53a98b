"""A fine-tuned classifier: its one prediction rule, loading and export (docs/classify.md).

The rule, used by `dnavec classify` (predictions/*.csv, the fine-tune rows' final metrics) and by
`dnavec predict` alike, so the two agree exactly:
  1. the sequence (its first max_length bases if the classifier was trained on those) is tokenized
     with the classifier's seed, embed.record_seed(seed, 0, sequence), and cut into windows as
     `embed` cuts them (loaded_model.sequence_windows);
  2. each window, [CLS] k-mers [SEP], goes through the encoder, BERT's pooler tanh(dense(.)) on the
     mean of the window's k-mer token states (pooling "mean", the default; the export's own model class
     DNAVecBertForSequenceClassification) or on its [CLS] state (pooling "cls": transformers'
     BertForSequenceClassification), and the classifier dense -> logits;
  3. the sequence's logits are the mean of its windows' logits; its probabilities their softmax.
A sequence of one window gets exactly the transformers model's output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from scipy.special import softmax
from tqdm import tqdm

from dnavec_jax import export
from dnavec_jax.errors import DNAVecError, read_json_object
from dnavec_jax.tokenization import record_seed
from dnavec_jax.tools.classify.settings import POOLINGS
from dnavec_jax.tools.loaded_model import Encoder, LoadedModel, check_dna, kmer_tokens, load_model, sequence_windows

CLASSIFIER_DIR = "classifier"
CLASSIFIER_FORMAT = "dnavec-classifier"
CLASSIFIER_VERSION = 1
WRITES_ONE = "`dnavec classify ... --output_dir OUT` writes one to OUT/classifier"


@dataclasses.dataclass(frozen=True, eq=False)  # identity semantics: holds arrays
class Classifier:
    loaded: LoadedModel  # the fine-tuned encoder and pooler (max_tokens: the windows it was trained on)
    kernel: np.ndarray  # (hidden, classes) float32, applied to the pooler output
    bias: np.ndarray  # (classes,)
    labels: tuple[str, ...]  # class id -> label
    seed: int  # tokenization seed (record_seed(seed, 0, ...))
    max_length: int = 0  # 0: whole sequences, else their first max_length bases
    pooling: str = "mean"  # classify.settings.POOLINGS: what the pooler reads


def pooler_input(hidden, input_ids, input_mask, pooling: str):
    """(windows, hidden) float32: what the pooler reads, the mean of each window's k-mer token states (not
    [CLS], [SEP] or [PAD]) or its [CLS] state. The one rule of fine-tuning, predict and (in torch) the export."""
    hidden = hidden.astype(jnp.float32)
    if pooling == "cls":
        return hidden[:, 0]
    kmers = kmer_tokens(input_ids, input_mask).astype(jnp.float32)[..., None]
    return (hidden * kmers).sum(1) / jnp.maximum(kmers.sum(1), 1.0)


def window_ids(loaded: LoadedModel, raw: np.ndarray, seed: int, tokenization: int, name: str) -> list[np.ndarray]:
    """The k-mer ids of each window of one sequence (raw letters) under tokenization t; t = 0 is what is
    predicted on."""
    windows = sequence_windows(loaded.tokenizer, raw, record_seed(seed, tokenization, raw), loaded.max_tokens, name)
    if not windows:
        raise DNAVecError(f"{name}: no k-mer to classify (no run of {loaded.tokenizer.k_min} or more A/C/G/T bases)")
    return [window.ids for window in windows]


def _logits_head(pooler: dict, kernel: np.ndarray, bias: np.ndarray, pooling: str):
    """Encoder head: the pooler (on pooler_input) and the classifier dense, per window."""
    def head(hidden, input_ids, input_mask):
        pooled = jnp.tanh(nn.Dense(pooler["kernel"].shape[1]).apply(
            {"params": pooler}, pooler_input(hidden, input_ids, input_mask, pooling)))
        return pooled @ jnp.asarray(kernel) + jnp.asarray(bias)

    return head


class Predictor:
    """Class probabilities of sequences by the rule of the module docstring; one compilation per window length."""

    def __init__(self, classifier: Classifier, batch_size: int = 64, dtype: str = "float32"):
        params = classifier.loaded.params
        pooler = {name: np.asarray(value, np.float32) for name, value in params["pooler"].items()}
        self.classifier = classifier
        self.windows = 0
        self._encoder = Encoder(classifier.loaded, batch_size,
                                head=_logits_head(pooler, np.asarray(classifier.kernel, np.float32),
                                                  np.asarray(classifier.bias, np.float32), classifier.pooling),
                                dtype=dtype)

    def probabilities(self, records: Iterable[tuple[str, str | np.ndarray]], num_records: int,
                      progress: bool = False) -> np.ndarray:
        """(num_records, classes) float64 probabilities of (name, sequence) records, in order."""
        classifier = self.classifier
        sums = np.zeros((num_records, len(classifier.labels)), np.float64)
        counts = np.zeros(num_records, np.int64)
        bar = tqdm(total=num_records, desc="predict", unit="seq", disable=not progress)

        def windows():
            seen = 0
            for index, (name, sequence) in enumerate(records):
                raw = check_dna(sequence, name)
                if classifier.max_length:
                    raw = raw[:classifier.max_length]
                for ids in window_ids(classifier.loaded, raw, classifier.seed, 0, name):
                    counts[index] += 1
                    yield index, ids
                seen += 1
                bar.update(1)
            if seen != num_records:
                raise ValueError(f"expected {num_records} records, got {seen}")

        try:
            for keys, logits in self._encoder.encode_windows(windows()):
                np.add.at(sums, np.asarray(keys), logits)
        finally:
            bar.close()
        self.windows += int(counts.sum())
        if not np.isfinite(sums).all():
            raise DNAVecError(f"{classifier.loaded.source}: the classifier produced NaN or Inf logits")
        return softmax(sums / counts[:, None], axis=1)


# ---- loading and exporting ------------------------------------------------------------

def load_classifier(path: str | Path) -> Classifier:
    """A `dnavec classify` classifier directory -> Classifier; one-line DNAVecError for anything else."""
    path = Path(path)
    where = f"--model {path}"
    if not path.is_dir():
        raise DNAVecError(f"{where}: no such directory ({WRITES_ONE})")
    if (path / "checkpoints").is_dir():
        raise DNAVecError(f"{where}: a training run directory, not a classifier ({WRITES_ONE})")
    if not (path / "config.json").is_file():
        raise DNAVecError(f"{where}: no config.json, not a classifier directory ({WRITES_ONE})")
    config = read_json_object(path / "config.json")
    architectures = config.get("architectures") or []
    if not set(export.CLASSIFIER_ARCHITECTURES.values()) & set(architectures):
        raise DNAVecError(f"{where}: not a sequence classifier (config.json architectures {architectures}; "
                          f"{WRITES_ONE})")
    info = {}
    if (path / export.DNAVEC_FILE).is_file():
        info = read_json_object(path / export.DNAVEC_FILE).get("classifier") or {}
    if info.get("format") != CLASSIFIER_FORMAT:
        raise DNAVecError(f"{where}: a {architectures[0]} from another tool ({export.DNAVEC_FILE} has no DNAVec "
                          f"classifier entry, so its tokenization and windows are unknown; {WRITES_ONE})")
    pooling = info.get("pooling", export.LEGACY_POOLING)
    if pooling not in POOLINGS or export.CLASSIFIER_ARCHITECTURES[pooling] not in architectures:
        raise DNAVecError(f"{where}: {export.DNAVEC_FILE} pooling {pooling!r} does not match config.json "
                          f"architectures {architectures} ({WRITES_ONE})")
    id2label = config.get("id2label") or {}
    try:
        labels = tuple(str(id2label[str(i)]) for i in range(len(id2label)))
    except KeyError:
        raise DNAVecError(f"{where}: config.json id2label keys are not 0..{len(id2label) - 1}") from None
    if len(labels) < 2:
        raise DNAVecError(f"{where}: config.json id2label holds {len(labels)} class(es), a classifier needs 2 or more")
    loaded = load_model(path)
    if "pooler" in loaded.initialized:
        raise DNAVecError(f"{where}: {export.WEIGHTS_NAME} has no bert.pooler weights (incomplete classifier)")
    state = export.read_hf_state(path)
    weight, bias = state.get("classifier.weight"), state.get("classifier.bias")
    hidden = loaded.config.hidden_size
    if weight is None or bias is None or weight.shape != (len(labels), hidden) or bias.shape != (len(labels),):
        raise DNAVecError(f"{where}: {export.WEIGHTS_NAME} has no classifier.weight ({len(labels)}, {hidden}) and "
                          f"classifier.bias ({len(labels)},) for the {len(labels)} labels of config.json")
    try:
        seed, max_length, max_tokens = int(info["seed"]), int(info.get("max_length", 0)), int(info["max_tokens"])
    except (KeyError, TypeError, ValueError) as error:
        raise DNAVecError(f"{where}: {export.DNAVEC_FILE} classifier entry lacks {error}") from None
    # The windows it was trained on (a run's seq_length may be shorter than the positions an export reports).
    loaded = dataclasses.replace(loaded, max_tokens=max_tokens)
    return Classifier(loaded, np.asarray(weight, np.float32).T, np.asarray(bias, np.float32), labels, seed, max_length,
                      pooling)


def export_classifier(classifier: Classifier, output_dir: Path, details: dict[str, Any]) -> Path:
    """Writes `classifier` as a transformers sequence-classification directory (the export's one writer):
    BertForSequenceClassification for pooling "cls", the export's own mean-pooling class otherwise."""
    loaded = classifier.loaded
    info = {"format": CLASSIFIER_FORMAT, "version": CLASSIFIER_VERSION, "labels": list(classifier.labels),
            "seed": classifier.seed, "max_length": classifier.max_length, "max_tokens": loaded.max_tokens,
            "pooling": classifier.pooling, "rule": "mean of the windows' logits, then softmax (docs/classify.md)",
            **details}
    head = export.ClassifierHead(classifier.kernel, classifier.bias, list(classifier.labels), info,
                                    card_section(classifier, details))
    return export.export_to_hf(loaded.params, loaded.config, loaded.tokenizer, output_dir, step=loaded.step,
                                  classifier=head)


def card_section(classifier: Classifier, details: dict[str, Any]) -> str:
    labels = ", ".join(f"`{label}`" for label in classifier.labels)
    test = details.get("test") or {}
    scores = ", ".join(f"{name} {test[name]:.3f}" for name in ("accuracy", "mcc", "auroc")
                       if test.get(name) is not None)
    truncation = (f"only its first {classifier.max_length} bases are used; " if classifier.max_length else "")
    mean = classifier.pooling == "mean"
    pooled = ("the mean of its k-mer token states (not `[CLS]`/`[SEP]`/`[PAD]`) goes through BERT's pooler and "
              "the classifier" if mean else "its `[CLS]` state goes through BERT's pooler and the classifier")
    remote = ", trust_remote_code=True" if mean else ""
    architecture = export.CLASSIFIER_ARCHITECTURES[classifier.pooling]
    remote_note = ("\nThe model class is `modeling_dnavec.py` of this directory (BERT with that mean-pooling head), "
                   "hence\n`trust_remote_code=True`; without it, loading stops with an error rather than reading "
                   "`[CLS]`." if mean else "")
    return f"""# DNAVec sequence classifier ({len(classifier.labels)} classes: {labels})

A `{architecture}` fine-tuned by `dnavec classify` (DNAVec-JAX) from
{details.get("base_model", "a DNAVec model")}{f"; test {scores}" if scores else ""}.
The labels are `id2label` in `config.json`. The rest of this card describes the
pretrained encoder it started from.

How it predicts a sequence: {truncation}it is tokenized with random k per position,
seed {classifier.seed} (`embed.record_seed({classifier.seed}, 0, sequence)`), cut into windows of at most
{classifier.loaded.max_tokens} k-mers as `dnavec embed` cuts them; in each window `[CLS] k-mers [SEP]`,
{pooled}, giving logits; the sequence's logits are the mean over its windows, its probabilities their
softmax. A sequence of one window gets exactly this model's transformers output.{remote_note}

```bash
dnavec predict --model path/to/this/directory --input sequences.csv --output predictions.csv
```

```python
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained("path/to/this/directory"{remote}).eval()
logits = model(input_ids=window_ids).logits   # window_ids: (windows, tokens), [CLS] k-mer ids [SEP]
probabilities = logits.mean(0).softmax(-1)     # one sequence
```
"""
