"""A progress bar with an ETA for long runs: drawn on a terminal, silent otherwise."""

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """`total` units of work, `done` of them already finished (a resumed run).

    Draws `label |█████·····| 3/10 chunks  0:12 elapsed  ETA 0:28` on `stream` when
    `enabled` (default: when `stream` is a terminal). The first unit of a session
    includes compilation, so the ETA uses the units after it once there are any.
    """

    def __init__(
        self, total: int, done: int = 0, *, label: str = "", enabled: bool | None = None, stream: TextIO | None = None
    ):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.done, self.label = total, done, label
        self.start = time.perf_counter()
        self.times: list[float] = []
        self._draw()

    def eta(self) -> float | None:
        """Seconds left, from the units finished in this session (`None` before any)."""
        if not self.times:
            return None
        steps = [b - a for a, b in zip([self.start, *self.times[:-1]], self.times, strict=True)]
        per_unit = sum(steps[1:]) / len(steps[1:]) if len(steps) > 1 else steps[0]
        return per_unit * (self.total - self.done)

    def advance(self) -> None:
        """One more unit finished."""
        self.done += 1
        self.times.append(time.perf_counter())
        self._draw()

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        if not self.enabled:
            return
        width = 30
        filled = width * self.done // max(self.total, 1)
        eta = self.eta()
        line = (
            f"\r{self.label} |{'█' * filled}{'·' * (width - filled)}| {self.done}/{self.total} chunks  "
            f"{_clock(time.perf_counter() - self.start)} elapsed  ETA {'?' if eta is None else _clock(eta)}  "
        )
        self.stream.write(line)
        self.stream.flush()
