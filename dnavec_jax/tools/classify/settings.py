"""`dnavec classify` settings: the run (ClassifySettings), the token probes' fit and fine-tuning.

Each default and its --help text are written once, here, as field metadata (fields.setting);
cli.py generates the classify flags from them and builds one ClassifySettings, which carries
the two fits' settings and is what everything below the command reads. Cheap to import (no
JAX): `dnavec --help` loads it. docs/classify.md describes the methods and the choices.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from dnavec_jax.errors import DNAVecError
from dnavec_jax.fields import setting
from dnavec_jax.tokenization import KmerTokenizer
from dnavec_jax.tools.settings import ModelSettings

# Where fine-tuning's pooler reads: the mean of the k-mer token states (embed's and the probes' pooling), or [CLS].
POOLINGS = ("mean", "cls")

METHODS = ("baseline", "probe", "finetune")
PROBE_FEATURES = ("static", "cls", "mean", "static_tokens", "tokens")
TOKEN_FEATURES = ("static_tokens", "tokens")  # probed per token (token_probe), the others pooled first (run_probe)


@dataclasses.dataclass(frozen=True)
class TokenProbeSettings:
    """The token probes' fit (probes.token_probe): AdamW on minibatches, the epoch with the best dev MCC kept.

    Flags: --probe_epochs, --probe_learning_rate, --probe_weight_decay (PROBE_FLAGS).
    """

    learning_rate: float = setting(3e-3, "token probes: AdamW learning rate")
    weight_decay: float = setting(0.1, "token probes: AdamW weight decay")  # decoupled, on the kernel only
    epochs: int = setting(100, "token probes: epochs at most")
    patience: int = setting(20, "epochs without a better dev MCC before stopping", flag=False)
    batch_size: int = setting(64, "sequences per step", flag=False)

    def check(self) -> None:
        if not self.learning_rate > 0 or self.weight_decay < 0:
            raise DNAVecError(f"--probe_learning_rate must be > 0 and --probe_weight_decay >= 0, got "
                              f"{self.learning_rate} and {self.weight_decay}")
        if self.epochs < 1:
            raise DNAVecError(f"--probe_epochs must be at least 1, got {self.epochs}")
        if self.patience < 1 or self.batch_size < 1:  # not command-line settings
            raise ValueError(f"patience and batch_size must be at least 1, got {self.patience}, {self.batch_size}")


PROBE_PREFIX = "probe_"
PROBE_FLAGS = ("epochs", "learning_rate", "weight_decay")  # in --help order


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    """Fine-tuning (finetuning.finetune): AdamW with linear warmup and decay, early stopping on dev MCC."""

    learning_rate: float = setting(3e-4, "fine-tuning peak learning rate (AdamW)")
    epochs: int = setting(20, "fine-tuning epochs at most")  # early stopping may end sooner
    batch_size: int = setting(32, "fine-tuning sequences per step; divisible by the device count")
    patience: int = setting(5, "stop fine-tuning after this many epochs without a better dev MCC")
    weight_decay: float = setting(0.01, "fine-tuning AdamW weight decay")
    warmup_fraction: float = setting(0.1, "fine-tuning linear warmup over this fraction of the steps, then linear "
                                          "decay")
    pooling: str = setting("mean", "what the classification head's pooler reads: mean (the mean of the k-mer "
                                   "token states, as embed and the probes pool; exported with its own model "
                                   "class) or cls (the [CLS] state: a plain BertForSequenceClassification)",
                           choices=POOLINGS)
    grad_clip_norm: float = setting(1.0, "global gradient norm clip", flag=False)
    retokenize: bool = setting(True, "fine-tune on one tokenization (default: a fresh random tokenization each "
                                     "epoch)", flag_name="no_retokenize", switch=True)
    seed: int = setting(0, "order, dropout and head seed (set from --seed)", flag=False)

    def check(self) -> None:
        if not self.learning_rate > 0:
            raise DNAVecError(f"--learning_rate must be > 0, got {self.learning_rate}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise DNAVecError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_fraction < 1 or self.weight_decay < 0:
            raise DNAVecError("--warmup_fraction must lie in [0, 1) and --weight_decay be >= 0")


def comma_list(text: str) -> tuple[str, ...]:
    """'a, b,a' -> ('a', 'b'): a comma-list flag's items, stripped, first occurrence kept."""
    return tuple(dict.fromkeys(item.strip() for item in (text or "").split(",") if item.strip()))


def parse_sizes(items: tuple[str | int, ...]) -> tuple[int, ...]:
    """('150', '50', 500) -> (50, 150, 500): --train_sizes (comma_list's items), each a positive integer,
    ascending, no repeats; checked when the settings are built, so a mistake is a one-line DNAVecError."""
    if not all(re.fullmatch(r"\d+", str(item).strip()) and int(item) > 0 for item in items):
        raise DNAVecError(f"--train_sizes {','.join(map(str, items))!r}: expected a comma list of positive "
                          "integers, e.g. 50,150,500")
    return tuple(sorted({int(item) for item in items}))


def parse_k_range(text: str) -> tuple[int, int]:
    """'6' -> (6, 6); '3-6' or '3..6' -> (3, 6)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:(?:-|\.\.)\s*(\d+)\s*)?", text or "")
    if not match:
        raise DNAVecError(f"--baseline_k {text!r}: expected K or K_MIN-K_MAX, e.g. 6 or 3-6")
    k_min = int(match.group(1))
    k_max = int(match.group(2) or k_min)
    try:
        KmerTokenizer(k_min, k_max)
    except ValueError as error:
        raise DNAVecError(f"--baseline_k {text!r}: {error}") from None
    return k_min, k_max


# The flags that say where to read and write, not how to classify: left out of results.json's settings.
IO_FIELDS = ("model", "step", "train", "dev", "test", "output_dir", "overwrite")


@dataclasses.dataclass(frozen=True)
class ClassifySettings(ModelSettings):
    """One `dnavec classify` run: its tables, which methods run on which features with which seeds, and the
    two fits' settings (token_probe, finetune). Checked when built: a bad value is a one-line DNAVecError."""

    train: str = setting("", "train CSV/TSV with a header naming a 'sequence' and a 'label' column", required=True)
    dev: str = setting("", "dev CSV/TSV with a header naming a 'sequence' and a 'label' column", required=True)
    test: str = setting("", "test CSV/TSV with a header naming a 'sequence' and a 'label' column", required=True)
    output_dir: str = setting("", "directory for results.json, predictions/ and classifier/ (created if missing)",
                              required=True)
    methods: tuple[str, ...] = setting(METHODS, "comma list of baseline, probe, finetune (default all three)",
                                       parse=comma_list)
    seed: int = setting(0, "tokenization, fine-tuning order/dropout/head and scikit-learn seed")
    seeds: int = setting(1, "run the probe and fine-tune rows with N seeds (--seed, --seed+1, ...) and report mean "
                            "± sd; predictions and classifier/ are the --seed run's (default %(default)s). With "
                            "--train_sizes each seed also draws its own train subsamples")
    train_sizes: tuple[int, ...] = setting((), "label-efficiency curves: comma list of train-set sizes, e.g. "
                                           "50,150,500. Every method runs at each size on nested, class-stratified "
                                           "subsamples of --train, one draw per seed (--seeds 2 or more), with the "
                                           "model and its random-init twin; writes label_efficiency.csv and .png "
                                           "and results.json instead of predictions/ and classifier/",
                                           parse=comma_list)
    predictions: str = setting("finetune", "predictions/*.csv columns: the fine-tuned model's (default), or every "
                               "method's too", choices=("finetune", "all"))
    max_length: int = setting(0, "use only the first N bases of each sequence, for every method (default "
                                 "%(default)s: all)")
    baseline_k: str = setting("", "k of the k-mer baseline: K or K_MIN-K_MAX (default: the model's k range)")
    tfidf: bool = setting(False, "baseline: tf-idf weighting instead of L2-normalised counts", switch=True)
    probe_features: tuple[str, ...] = setting(PROBE_FEATURES, "comma list of static, cls, mean (pooled, then "
                                              "logistic regression) and static_tokens, tokens (a linear score per "
                                              "token, log-sum-exp pooled); default all five", parse=comma_list)
    probe_tokenizations: int = setting(4, "probe: use this many seeded tokenizations (pooled features are averaged "
                                          "over them, token probes see the tokens of all of them)")
    embed_batch_size: int = setting(64, "probe: windows per jitted batch")
    random_init_control: bool = setting(False, "also run the probes and fine-tuning on the same architecture with "
                                        "freshly initialised weights: the gap to those rows is what pretraining "
                                        "adds (doubles their cost)", switch=True)
    token_probe: TokenProbeSettings = setting(TokenProbeSettings(), "the token probes' fit", flag=False)
    finetune: FinetuneSettings = setting(FinetuneSettings(), "fine-tuning (its seed is replaced by each run's)",
                                         flag=False)
    overwrite: bool = setting(False, "replace an existing OUTPUT_DIR/results.json, predictions/ and classifier/",
                              switch=True)

    def __post_init__(self):
        for flag, items, allowed in (("--methods", self.methods, METHODS),
                                     ("--probe_features", self.probe_features, PROBE_FEATURES)):
            if not items or set(items) - set(allowed):
                raise DNAVecError(f"{flag} {','.join(items)!r}: expected a comma list of {', '.join(allowed)}")
        if self.seed < 0:
            raise DNAVecError(f"--seed must be non-negative, got {self.seed}")
        for name in ("seeds", "probe_tokenizations"):
            if getattr(self, name) < 1:
                raise DNAVecError(f"--{name} must be at least 1, got {getattr(self, name)}")
        object.__setattr__(self, "train_sizes", parse_sizes(self.train_sizes))  # strings from the flag -> ints
        if self.train_sizes and self.seeds < 2:
            raise DNAVecError("--train_sizes draws one subsample per seed: pass --seeds 2 or more (the interval is "
                              "over draws as well as test rows; docs/classify.md uses 5)")
        if self.train_sizes and not set(self.methods) & {"probe", "finetune"}:
            raise DNAVecError("--train_sizes compares the model with its random-init twin: --methods needs probe or "
                              "finetune")
        if self.embed_batch_size < 1:
            raise DNAVecError(f"--embed_batch_size must be positive, got {self.embed_batch_size}")
        self.baseline_k_range  # noqa: B018  (a bad --baseline_k fails here, before any work)
        self.token_probe.check()
        self.finetune.check()

    @property
    def baseline_k_range(self) -> tuple[int, int] | None:
        """(k_min, k_max) of --baseline_k, or None: the model's k range."""
        return parse_k_range(self.baseline_k) if self.baseline_k else None

    @property
    def run_seeds(self) -> list[int]:
        """--seed, --seed + 1, ...: one per --seeds."""
        return [self.seed + i for i in range(self.seeds)]

    def report(self) -> dict[str, Any]:
        """results.json's "settings": every setting but where the tables and outputs are."""
        return {name: value for name, value in dataclasses.asdict(self).items() if name not in IO_FIELDS}
