"""The training run's settings: typed, validated sections whose defaults are configs/base.py's.

A config file (configs/*.py) is an ml_collections ConfigDict with the sections
model (model.BertConfig), data (DataSettings, with data.prep = data.PrepSettings),
train, export and distributed; RunSettings.from_config turns it into these frozen
dataclasses, and every mistake is a one-line DNAVecError before anything compiles.
docs/training.md lists the settings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dnavec_jax.data.settings import PrepSettings
from dnavec_jax.errors import DNAVecError
from dnavec_jax.fields import from_mapping, setting
from dnavec_jax.model import BertConfig
from dnavec_jax.training.objective import OBJECTIVES
from dnavec_jax.training.optim import OptimizerSettings

SCHEDULES = ("linear", "cosine", "constant")
SOURCES = ("tfrecord", "fasta", "synthetic")
# jax.random implementations for dropout: threefry is reproducible on any mesh; rbg and unsafe_rbg draw
# with XLA's RngBitGenerator, much cheaper on GPUs and TPUs (docs/training.md).
PRNG_IMPLS = {"threefry": "threefry2x32", "rbg": "rbg", "unsafe_rbg": "unsafe_rbg"}  # setting -> jax's name
DISTRIBUTED_MODES = ("auto", "always", "never")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    global_batch_size: int = setting(8, "examples per optimizer update, over all devices and accumulation steps "
                                        "(the paper's 8)")
    grad_accum_steps: int = setting(1, "microbatches per update (lax.scan inside the step)")
    num_train_steps: int = setting(80_000, "optimizer updates")
    learning_rate: float = setting(4e-4, "peak learning rate")
    warmup_steps: int = setting(10_000, "linear warmup from 0 (12.5% of the steps; the paper states none)")
    schedule: str = setting(OptimizerSettings.schedule, "decay after the warmup", choices=SCHEDULES)
    end_learning_rate_factor: float = setting(OptimizerSettings.end_learning_rate_factor,
                                              "final learning rate = factor * peak")
    weight_decay: float = setting(OptimizerSettings.weight_decay,
                                  "AdamW decay, on matrices only (not biases, LayerNorm or the pooler)")
    adam_b1: float = setting(OptimizerSettings.adam_b1, "Adam beta1")
    adam_b2: float = setting(OptimizerSettings.adam_b2, "Adam beta2")
    adam_eps: float = setting(OptimizerSettings.adam_eps, "Adam epsilon")
    grad_clip_norm: float = setting(OptimizerSettings.grad_clip_norm, "global-norm gradient clipping; 0 disables")
    mlm_objective: str = setting("vocabulary", "vocabulary: cross-entropy over the whole vocabulary (the paper's); "
                                               "length_aware: over the k-mers of the target's length, so the k "
                                               "hidden at a [MASK] is not part of the loss", choices=OBJECTIVES)
    fsdp: bool = setting(False, "shard parameters and optimizer state over all devices")
    seed: int = setting(0, "parameters, dropout and data order")
    prng_impl: str = setting("threefry", "dropout's random numbers: threefry (the same on any mesh), rbg or "
                                         "unsafe_rbg (XLA's RngBitGenerator: far cheaper on GPUs and TPUs); "
                                         "stored with the checkpoint and checked on resume",
                             choices=tuple(PRNG_IMPLS))
    log_every_steps: int = setting(100, "steps per train row of metrics.jsonl")
    eval_every_steps: int = setting(5_000, "steps between evaluations of the whole validation split; 0: only at "
                                           "the end")
    eval_batch_size: int = setting(64, "examples per eval step, over all devices")
    copy_probe: bool = setting(True, "each evaluation also runs the copy probe (a second pass over the validation "
                                     "split: isolated [MASK]s whose bases show in their neighbours); off: loss, "
                                     "accuracy and ceilings only, in half the time")
    checkpoint_every_steps: int = setting(2_000, "steps between checkpoints; 0: no checkpoints at all, none saved "
                                                 "or resumed (benchmarks)")
    keep_checkpoints: int = setting(3, "checkpoints kept on disk")
    async_checkpointing: bool = setting(True, "save in the background")

    def __post_init__(self):
        for name in ("global_batch_size", "num_train_steps", "grad_accum_steps", "log_every_steps",
                     "keep_checkpoints", "eval_batch_size"):
            if getattr(self, name) <= 0:
                raise DNAVecError(f"train.{name} must be positive, got {getattr(self, name)}")
        if self.checkpoint_every_steps < 0:
            raise DNAVecError(f"train.checkpoint_every_steps must be >= 0 (0: no checkpoints, for benchmarks), "
                              f"got {self.checkpoint_every_steps}")
        if self.warmup_steps < 0 or self.warmup_steps > self.num_train_steps:
            raise DNAVecError(f"train.warmup_steps must lie in 0..num_train_steps ({self.num_train_steps}), "
                              f"got {self.warmup_steps}")
        if self.eval_every_steps < 0:
            raise DNAVecError(f"train.eval_every_steps must be >= 0 (0: only at the end), got {self.eval_every_steps}")
        if not self.learning_rate > 0 or self.weight_decay < 0 or self.grad_clip_norm < 0:
            raise DNAVecError("train.learning_rate must be > 0, train.weight_decay and train.grad_clip_norm >= 0")
        if self.global_batch_size % self.grad_accum_steps:
            raise DNAVecError(f"train.global_batch_size ({self.global_batch_size}) must be divisible by "
                              f"train.grad_accum_steps ({self.grad_accum_steps})")

    @property
    def micro_batch_size(self) -> int:
        """Global examples per microbatch."""
        return self.global_batch_size // self.grad_accum_steps

    @property
    def optimizer(self) -> OptimizerSettings:
        """The optimizer's part of these settings (what optim.make_optimizer takes)."""
        return OptimizerSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(OptimizerSettings)})


@dataclasses.dataclass(frozen=True)
class DataSettings:
    data_dir: str = setting("data_cache/genome", "the prepared dataset's directory (what data prep wrote)")
    source: str = setting("tfrecord", "tfrecord: the prepared shards; fasta: data.prep.fasta (empty: the embedded "
                                      "chr22 megabase) tokenized and masked in memory at start-up as data prep "
                                      "would (small genomes; needs no TensorFlow or pyfaidx); synthetic: random data "
                                      "of the same shapes (throughput runs; needs no TensorFlow)", choices=SOURCES)
    prepare_if_missing: bool = setting(False, "run data prep with data.prep when data_dir holds no such dataset")
    shuffle_buffer: int = setting(10_000, "examples in the shuffle buffer; the shuffle is seeded per epoch")
    synthetic_eval_examples: int = setting(256, "size of the synthetic source's validation split")
    tf_threads: int = setting(0, "TensorFlow threads of the input pipeline; 0: a quarter of the cores (1..8)")


@dataclasses.dataclass(frozen=True)
class ExportSettings:
    hf_dir: str = setting("hf", "after a completed one-process run, export the final checkpoint as a Hugging "
                                "Face model to this directory (relative to the workdir); empty: no export")


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    initialize: str = setting("auto", "jax.distributed.initialize(): auto (when a coordinator is set or a "
                                      "multi-process cluster is detected), always or never",
                              choices=DISTRIBUTED_MODES)
    coordinator_address: str = setting("", "host:port of process 0")
    num_processes: int = setting(0, "0: from the cluster environment")
    process_id: int = setting(-1, "-1: from the cluster environment")


SECTIONS = {"data": DataSettings, "train": TrainSettings, "export": ExportSettings,
            "distributed": DistributedSettings}


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """A whole training config, typed. to_dict() is what WORKDIR/config.json holds."""

    model: BertConfig
    data: DataSettings
    prep: PrepSettings
    train: TrainSettings
    export: ExportSettings
    distributed: DistributedSettings

    @classmethod
    def from_config(cls, config) -> RunSettings:
        """From a ConfigDict (or a plain dict) with the sections of configs/base.py."""
        values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        missing = sorted({"model", "data", *SECTIONS} - set(values))
        if missing:
            raise DNAVecError(f"the config lacks the section(s) {', '.join(missing)} (see configs/base.py)")
        unknown = sorted(set(values) - {"model", *SECTIONS})
        if unknown:
            raise DNAVecError(f"unknown config section(s) {', '.join(unknown)}")
        data = dict(values["data"])
        prep = PrepSettings.from_dict(dict(data.pop("prep", {})))  # DNAVecError on bad settings
        model = model_config_from(values)
        sections = {name: from_mapping(kind, dict(values[name]), name)
                    for name, kind in SECTIONS.items() if name != "data"}
        settings = cls(model=model, data=from_mapping(DataSettings, data, "data"), prep=prep, **sections)
        settings.check_vocabulary()
        return settings

    def check_vocabulary(self) -> None:
        vocab = self.prep.tokenizer().vocab_size
        if vocab != self.model.vocab_size:
            raise DNAVecError(f"model.vocab_size ({self.model.vocab_size}) does not match the k-mer vocabulary of "
                              f"k {self.prep.k_min}..{self.prep.k_max} ({vocab} ids); set "
                              f"--config.model.vocab_size={vocab}")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": {**dataclasses.asdict(self.data), "prep": self.prep.to_dict()},
                **{name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS if name != "data"}}


def model_config_from(config) -> BertConfig:
    """The model section of a config alone (tools and benchmarks that build a model without a run)."""
    try:
        return BertConfig.from_dict(config.model.to_dict() if hasattr(config, "model") else dict(config["model"]))
    except (TypeError, ValueError) as error:
        raise DNAVecError(str(error)) from None


def check_devices(train: TrainSettings, num_devices: int) -> None:
    """The global batches must split evenly over the data-parallel devices."""
    micro = train.micro_batch_size
    if micro % num_devices:
        raise DNAVecError(
            f"train.global_batch_size ({train.global_batch_size}"
            + (f" = {train.grad_accum_steps} microbatches of {micro}" if train.grad_accum_steps > 1 else "")
            + f") must be divisible by the {num_devices} data-parallel devices"
        )
    if train.eval_batch_size % num_devices:
        raise DNAVecError(f"train.eval_batch_size ({train.eval_batch_size}) must be divisible by the "
                          f"{num_devices} data-parallel devices")


def config_sections(**overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The default sections as plain dicts (what configs/base.py builds on), each updated with `overrides`."""
    defaults = {"model": BertConfig().to_dict(), "data": {**dataclasses.asdict(DataSettings()),
                                                          "prep": dataclasses.asdict(PrepSettings())},
                **{name: dataclasses.asdict(kind()) for name, kind in SECTIONS.items() if name != "data"}}
    for name, values in overrides.items():
        defaults[name].update(values)
    return defaults
