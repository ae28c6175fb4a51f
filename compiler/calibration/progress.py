"""A one-line progress display for long loops (calibration): `calibrate  96/256 samples  38%  0.4 s`.

Drawn on stderr only when it is a terminal, so logs, pipes and CI stay clean; redrawn at most every 0.1 s and
erased when done. No dependency (tqdm is not needed).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(
        self,
        total: int,
        label: str = "calibrate",
        unit: str = "samples",
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = 0.1,
    ) -> None:
        """`enabled=None`: on when `stream` (default stderr) is a terminal."""
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.label, self.unit, self.interval = total, label, unit, interval
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.width = 0

    def line(self) -> str:
        share = f"  {min(self.done / self.total, 1.0):4.0%}" if self.total > 0 else ""
        return f"{self.label}  {self.done}/{self.total} {self.unit}{share}  {time.perf_counter() - self.start:.1f} s"

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last >= self.interval or self.done >= self.total):
            self.last = now
            text = self.line()
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)

    def close(self) -> None:
        """Erase the line (what was measured is reported elsewhere)."""
        if self.enabled and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0
