"""Preemption: SIGTERM (what SLURM and Kubernetes send before killing a job) and SIGINT (Ctrl-C) during
training are remembered, not obeyed at once, so the loop can finish its step, write a checkpoint at that step
boundary and exit; ``--resume`` then loses no step. A second SIGINT aborts at once (the previous checkpoint is
still there), for a user who does not want to wait.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """The first SIGTERM or SIGINT received while ``installed``; None until one arrives."""

    def __init__(self) -> None:
        self.received: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handle the signals inside the block, restoring the previous handlers after it. Only the main thread
        can install handlers; elsewhere (a notebook's worker thread) signals keep their usual effect."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
        for signum in SIGNALS:
            signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without the checkpoint
        self.received = self.received or signum
