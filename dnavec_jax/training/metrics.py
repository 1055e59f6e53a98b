"""Metrics: metrics.jsonl and TensorBoard rows, the per-interval meter, peak FLOP/s and the memory log.

Every row has "step", "split" ("train" or "eval") and "time" next to the metric
names; docs/training.md defines each metric.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import jax
from absl import logging

from dnavec_jax.errors import DNAVecError
from dnavec_jax.tf_runtime import tensorflow


def log_memory(name: str, compiled) -> None:
    try:
        stats = compiled.memory_analysis()
    except Exception as error:  # not every backend implements it
        logging.info("%s: no memory analysis (%s)", name, error)
        return
    if stats is None:
        logging.info("%s: no memory analysis on this backend", name)
        return
    def mib(n):
        return f"{n / 2**20:.1f} MiB"
    logging.info("%s memory per device: arguments %s, outputs %s (aliased %s), temporaries %s, code %s", name,
                 mib(stats.argument_size_in_bytes), mib(stats.output_size_in_bytes), mib(stats.alias_size_in_bytes),
                 mib(stats.temp_size_in_bytes), mib(stats.generated_code_size_in_bytes))


# Dense bf16 peak FLOP/s of one device (one chip for TPUs), first substring match of device_kind wins.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12), ("V100", 125e12),
    ("TPU v6", 918e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5", 459e12), ("TPU v4", 275e12),
)


def peak_flops_per_device(device: jax.Device) -> float | None:
    if device.platform == "cpu":
        return None
    return peak_flops_for_kind(getattr(device, "device_kind", ""))


def peak_flops_for_kind(kind: str) -> float | None:
    """PEAK_FLOPS of an accelerator named `kind` (jax's device_kind, torch.cuda.get_device_name), None if unknown."""
    for name, peak in PEAK_FLOPS:
        if name in kind:
            return peak
    return None


METRICS_FILE = "metrics.jsonl"  # in the workdir: one JSON row per line (MetricWriter)


def eval_row(workdir: str | Path, step: int) -> dict[str, float] | None:
    """The last eval row of `step` in workdir/metrics.jsonl, or None (no file, no such row, unreadable lines)."""
    path = Path(workdir) / METRICS_FILE
    found = None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash: the rows before it still count
            continue
        if isinstance(row, dict) and row.get("split") == "eval" and row.get("step") == step:
            found = row
    return found


class MetricWriter:
    """metrics.jsonl (one JSON object per row) + TensorBoard event files, written by process 0 only.

    Every row has "step", "split" ("train" or "eval") and "time" (unix seconds)
    next to the metric names.
    """

    def __init__(self, workdir: Path, enabled: bool, resume_step: int, tensorboard: bool = True):
        self.enabled = enabled
        self.path = workdir / METRICS_FILE
        self._tb = None
        if not enabled:
            return
        if self.path.exists():  # rows of an interrupted run beyond the restored checkpoint are replaced
            rows = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
            kept = [line for line in rows if json.loads(line).get("step", 0) <= resume_step]
            if len(kept) != len(rows):
                self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        if not tensorboard:
            logging.warning("TensorFlow is not installed: metrics go to %s only, no TensorBoard files", self.path)
            return
        tf = tensorflow("TensorBoard files")
        from tensorflow.core.framework import summary_pb2

        self._tb = tf.summary.create_file_writer(str(workdir / "tensorboard"))
        self._scalar_tag = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")).SerializeToString()

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}, "time": time.time()}
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        except OSError as error:
            raise DNAVecError(f"{self.path}: cannot write the metrics ({error.strerror or error}); free disk space "
                              "or make the workdir writable, then run the same command again to resume") from None
        if self._tb is None:
            return
        tf = tensorflow("TensorBoard files")
        # tf.summary.write with the "scalars" plugin tag: what tf.summary.scalar writes, without
        # needing the tensorboard package at training time (only to view the files).
        with self._tb.as_default(step=int(step)):
            for name, value in metrics.items():
                tf.summary.write(f"{split}/{name}", tf.constant(float(value), tf.float32), metadata=self._scalar_tag)
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class TrainMeter:
    """Accumulates the fetched per-step metrics of one logging interval."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops: float | None, num_devices: int):
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak_flops, self.num_devices = peak_flops, num_devices
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.loss_sum = self.correct = self.weight = self.accuracy_weight = self.grad_norm = 0.0
        self.learning_rate = 0.0
        self.started = time.perf_counter()

    def add(self, metrics: dict[str, Any]) -> None:
        self.steps += 1
        self.loss_sum += float(metrics["loss_sum"])
        self.correct += float(metrics["correct"])
        self.weight += float(metrics["weight"])
        self.accuracy_weight += float(metrics["accuracy_weight"])
        self.grad_norm += float(metrics["grad_norm"])
        self.learning_rate = float(metrics["learning_rate"])

    def summary(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        loss = self.loss_sum / max(self.weight, 1.0)
        tokens_per_s = self.tokens_per_step * self.steps / elapsed
        row = {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "learning_rate": self.learning_rate,
               "grad_norm": self.grad_norm / max(self.steps, 1), "step_time_s": elapsed / max(self.steps, 1),
               "tokens_per_s": tokens_per_s, "masked_tokens": self.weight}
        if self.accuracy_weight > 0:  # measured on the interval's last step (make_train_step)
            row["accuracy"] = self.correct / self.accuracy_weight
        if self.peak_flops:
            row["mfu"] = tokens_per_s * self.flops_per_token / (self.num_devices * self.peak_flops)
        return row
