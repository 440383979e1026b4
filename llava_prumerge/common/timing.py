"""Wall-clock timing that waits for queued CUDA work, shared by bench, the reducer bench and the demo."""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

import torch


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the GPU's queued work (nothing to wait for on a CPU)."""
    device = torch.device(device) if device is not None else None
    if (device is None and torch.cuda.is_available()) or (device is not None and device.type == "cuda"):
        torch.cuda.synchronize(device)


def clock(run, device: torch.device | str | None = None) -> float:
    """Seconds `run()` takes, its GPU work included."""
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


NOISY_SPREAD = 0.5  # (slowest - fastest) / median past which a median time is flagged as noise


@dataclass(frozen=True)
class StageTime:
    """A median time over repeated runs and how far the runs spread around it."""

    ms: float  # the median
    spread: float  # (slowest - fastest) / median

    @property
    def noisy(self) -> bool:
        """Whether the runs differ too much for the median to be compared (a busy machine, or too short)."""
        return self.spread > NOISY_SPREAD

    def cell(self) -> str:
        """The time for a table: flagged when noisy."""
        return f"{self.ms:.1f}" + (" (noisy)" if self.noisy else "")


def timed(run, repeats: int, device: torch.device | str | None = None):
    """(result, StageTime of `repeats` runs after one warm-up)."""
    result = run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return result, StageTime(1000 * median, (max(times) - min(times)) / median if median else 0.0)


class PhaseTimer:
    """Wall-clock seconds of named code blocks (`with timer("vision"): ...`), GPU work included."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        self.seconds[phase] = time.perf_counter() - start


@contextlib.contextmanager
def torch_threads(count: int):
    """Run with `count` CPU threads, then restore the previous count."""
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """A count with its noun in the right number ("1 thread", "3 passes"), for benchmark reports."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
