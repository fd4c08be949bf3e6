"""The in-process executor: one part at a time in this process, on every core it may use (the sequential path is
the distributed path with one slot). Its epoch lines reach the driver as they are written (``on_log``)."""

from __future__ import annotations

import dataclasses
import traceback
from typing import Callable

from ._parts import PartSpec, RunPayload, compute_part
from ._resources import Event, available_cores
from ._device import pick_device


class InProcessExecutor:
    """Computes one part at a time in this process (``model_factory`` for tests)."""

    slots = 1

    def __init__(self, log: Callable[[str], None] = print, model_factory: Callable | None = None,
                 on_start: Callable[[object, str, str], None] | None = None, cores: int | None = None):
        self.log, self.model_factory = log, model_factory
        self.on_start = on_start or (lambda key, device, node: None)
        self.on_log: Callable[[object, str], None] = lambda key, line: self.log(line)
        self.cores = cores or available_cores()
        self.description = f"one fold at a time in this process ({self.cores} core{'s' if self.cores != 1 else ''})"
        self._queue: list[tuple[object, PartSpec, RunPayload]] = []

    def check(self, backbones: list[str]) -> None:
        """Nothing to check: parts train with this process's libraries."""

    def put(self, payload: RunPayload) -> RunPayload:
        return payload

    def submit(self, key: object, spec: PartSpec, payload: RunPayload, *, alone: bool = False) -> None:
        # every core this process may use (affinity, cgroup quota), unless --threads says otherwise
        if not spec.cfg.threads:
            spec = dataclasses.replace(spec, cfg=spec.cfg.replace(threads=self.cores))
        self._queue.append((key, spec, payload))

    def wait(self, timeout: float | None = None) -> list[Event]:
        """Compute the next submitted part here and now."""
        if not self._queue:
            return []
        key, spec, payload = self._queue.pop(0)
        device = pick_device(spec.cfg.device).type
        self.on_start(key, device, "")
        try:
            result = compute_part(spec, payload, device_name=device, log=lambda line: self.on_log(key, line),
                                  model_factory=self.model_factory)
        except Exception as exc:  # raised inside the part: reported by the scheduler, never retried
            return [Event(key, "error", error=exc, traceback=traceback.format_exc())]
        return [Event(key, "done", result=result)]

    def cancel(self) -> None:
        self._queue.clear()

    def close(self) -> None:
        self.cancel()
