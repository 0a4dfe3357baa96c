"""A progress line with ETA: redrawn in place on a terminal, plain periodic lines in logs, silent when quiet."""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def fmt_time(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Shows `label [bar] i/n <stats> elapsed ETA`. `stats` is a callable so values are only
    fetched (a device sync) when a line is actually drawn."""

    def __init__(self, total: int, label: str = "", quiet: bool = False, stream: TextIO | None = None,
                 tty_every: float = 0.25, log_every: float = 30.0):
        self.total, self.label, self.quiet = total, label, quiet
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every = tty_every if self.tty else log_every
        self.start = self.last = time.perf_counter()

    def update(self, done: int, stats: Callable[[], str] = lambda: "") -> None:
        now = time.perf_counter()
        if self.quiet or (now - self.last < self.every and done < self.total):
            return
        if done >= self.total and not self.tty:
            return  # in logs the epoch summary line that follows says it all
        self.last = now
        elapsed = now - self.start
        eta = elapsed / done * (self.total - done) if done else 0.0
        bar = "#" * (20 * done // self.total) + "." * (20 - 20 * done // self.total) if self.tty else ""
        line = f"{self.label} {bar} {done}/{self.total} {stats()} {fmt_time(elapsed)}<{fmt_time(eta)}"
        line = " ".join(line.split())
        if self.tty:
            self.stream.write("\r\033[K" + line)
            if done >= self.total:
                self.stream.write("\r\033[K")  # the epoch summary line replaces the bar
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
