"""One visitor's control over their turns on the shared Service: one model turn at a time, Stop that
works while a turn waits or runs, and Clear that a running turn notices (pure: no model, no gradio).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import BadInput

BUSY_TURN = "a reply is still being generated: wait for it, or press Stop"
_MAKING = threading.Lock()  # a session's own lock is made once, even by two first turns at once


@dataclass
class Session:
    cancel: threading.Event | None = None  # the turn being generated (or queued): Stop sets it
    epoch: int = 0  # bumped by Clear: a turn started in an older epoch keeps its result to itself
    # made on first use: gr.State copies its initial value per visitor (and its config deep-copies the
    # fields), and a lock cannot be copied
    lock: threading.Lock | None = None

    def arm(self) -> None:
        """Before a turn is queued: its cancel event exists at once, so Stop works while it waits."""
        if self.lock is None or not self.lock.locked():
            self.cancel = threading.Event()

    def stop(self) -> None:
        if self.cancel is not None:
            self.cancel.set()

    def clear(self) -> None:
        """Stop whatever runs and start a new epoch."""
        self.stop()
        self.epoch += 1

    @contextmanager
    def turn(self) -> Iterator[threading.Event]:
        """Hold the visitor's turn for a reply or a fork; refuse a second one meanwhile."""
        with _MAKING:
            if self.lock is None:
                self.lock = threading.Lock()
        if not self.lock.acquire(blocking=False):
            raise BadInput(BUSY_TURN)
        if self.cancel is None:  # a fork, or a turn that was not armed
            self.cancel = threading.Event()
        try:
            yield self.cancel
        finally:
            self.cancel = None
            self.lock.release()
