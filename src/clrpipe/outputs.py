"""All-or-nothing file outputs: a stage either writes every output or leaves none behind."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_outputs(*targets: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield a temporary path beside each target; move them all into place only on success.

    Temporaries live in the target's directory so the final `os.replace` is an atomic rename.
    If the block raises, every temporary is removed and no target is touched.
    """
    finals = [Path(t) for t in targets]
    temps: list[Path] = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=final.suffix or ".tmp",
                                        dir=final.parent)
            os.close(fd)
            temps.append(Path(name))
        yield temps
        with uninterruptible():
            for temp, final in zip(temps, finals, strict=True):
                os.replace(temp, final)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


@contextlib.contextmanager
def uninterruptible() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM for a short critical step (moving outputs into place, ending an
    MLflow run), so a signal cannot leave half the outputs written or a run RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
