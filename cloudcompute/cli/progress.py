"""Progress for the command line: a tqdm bar on a terminal, plain log lines
otherwise (CI, pipes), so that scripts still see how far a run has come.
Those lines are INFO records of ``cloudcompute.cli.progress``, a logger the
command line sets to INFO, so they show without ``-v`` and are not warnings."""
from __future__ import annotations

import contextlib
import logging
import sys
import threading
from typing import Any, Callable, Iterator, Optional

from tqdm import tqdm

PROGRESS_LOGGER = "cloudcompute.cli.progress"
LOG = logging.getLogger(PROGRESS_LOGGER)


def _tqdm(**kw: Any) -> Optional[tqdm]:
    return tqdm(file=sys.stderr, **kw) if sys.stderr.isatty() else None


class progress_bar:
    """Counts steps; ``tick(message)`` marks one done."""

    def __init__(self, total: int, unit: str):
        self.total, self.unit, self.done = total, unit, 0
        self.bar = _tqdm(total=total, unit=unit)

    def __enter__(self) -> Callable[[str], None]:
        def tick(message: str) -> None:
            self.done += 1
            if self.bar is not None:
                self.bar.update(1)
            else:
                LOG.info("[%d/%d] %s", self.done, self.total, message)
        return tick

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def byte_bar(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """Counts bytes; ``moved(n)`` adds n. Without a terminal, a line per 10%."""
    bar = _tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label)
    lock = threading.Lock()
    state = {"done": 0, "logged": 0}

    def moved(n: int) -> None:
        with lock:
            state["done"] += n
            if bar is not None:
                bar.update(n)
                return
            tenth = min(10, state["done"] * 10 // max(total, 1))
            if tenth > state["logged"]:
                state["logged"] = tenth
                LOG.info("%s: %d%% (%d of %d bytes)", label, tenth * 10,
                         min(state["done"], total), total)
    try:
        yield moved
    finally:
        if bar is not None:
            bar.close()
