"""Preemption: SIGTERM makes the loop save at the next step boundary and stop (docs/training.md)."""

from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils


class Preemption:
    """SIGTERM -> save at the next step boundary and stop.

    One process: a Python SIGTERM handler sets a flag. Several processes:
    jax.distributed's preemption service (which owns SIGTERM there) picks a step
    that every process reaches (multihost_utils.reached_preemption_sync_point).
    """

    def __init__(self, preempt_at_step: int | None = None):
        self.requested = False
        self.preempt_at_step = preempt_at_step  # tests: behave as if SIGTERM arrived before this step ended
        self._previous = None
        if jax.process_count() == 1:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handler)
            except ValueError:  # not the main thread
                self._previous = None

    def _handler(self, signum, frame):
        self.requested = True

    def reached(self, step: int) -> bool:
        if self.preempt_at_step is not None and step >= self.preempt_at_step:
            return True
        if jax.process_count() > 1:
            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # preemption service disabled
                return False
        return self.requested

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
