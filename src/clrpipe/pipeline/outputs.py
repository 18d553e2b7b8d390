"""All-or-nothing file outputs: a stage either writes every output or leaves none behind."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from clrpipe.errors import ClrpipeError

__all__ = ["STORAGE_ERRNOS", "atomic_outputs", "uninterruptible"]

# OSErrors without a file name that still mean "this output could not be stored" (a full disk, a
# quota, a file-size limit, a read-only or failing disk). Others without a file name, such as a
# refused connection while the block logs to a tracking server, are not about the outputs and
# propagate unchanged.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}
)


def _umask_mode() -> int:
    """0666 less the process's umask: the mode `open()` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_outputs(*targets: str | os.PathLike) -> Iterator[list[Path]]:
    """Yield a temporary path beside each target; move them all into place only on success.

    Temporaries live in the target's directory so the final `os.replace` is an atomic rename, and
    keep the target's suffix (`.model.keras.k3j2_x.keras`) so writers that go by the suffix
    (`keras.Model.save`, pandas' compression inference) can write the temporary directly.
    If the block raises, every temporary is removed and no target is touched. An OSError while
    creating, writing or moving an output (a full disk, a quota, a read-only folder) becomes one
    ClrpipeError line naming the output and the reason.
    """
    finals = [Path(t) for t in targets]
    temps: list[Path] = []
    created: dict[Path, tuple[int, int]] = {}
    moved = 0
    try:
        for final in finals:
            if final.is_dir():
                raise ClrpipeError(f"{final}: is a folder; expected a file path for this output")
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(
                    prefix=f".{final.name}.", suffix=final.suffix or ".tmp", dir=final.parent
                )
            except OSError as err:
                raise ClrpipeError(f"{final}: cannot create it ({_reason(err)})") from None
            os.close(fd)
            temps.append(Path(name))
            created[Path(name)] = _stamp(Path(name))
        try:
            yield temps
        except OSError as err:
            final = _failed_output(err, finals, temps, created)
            if final is None:
                raise
            raise ClrpipeError(
                f"{final}: cannot write it ({_reason(err)}); no output was replaced"
            ) from None
        mode = _umask_mode()
        with uninterruptible():
            for temp, final in zip(temps, finals, strict=True):
                try:
                    if temp.is_file():
                        os.chmod(temp, mode)  # mkstemp makes 0600; an output follows the umask
                    os.replace(temp, final)
                except OSError as err:
                    done = (
                        f"{moved} of {len(finals)} outputs were already replaced "
                        f"({', '.join(str(f) for f in finals[:moved])})"
                        if moved
                        else "no output was replaced"
                    )
                    raise ClrpipeError(
                        f"{final}: cannot move it into place ({_reason(err)}); {done}"
                    ) from None
                moved += 1
    finally:
        for temp in temps[moved:]:
            _remove(temp)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1)
    return (stat.st_size, stat.st_mtime_ns)


def _failed_output(
    err: OSError, finals: list[Path], temps: list[Path], created: dict[Path, tuple[int, int]]
) -> Path | None:
    """The output an OSError from the block was about, or None when it is not about them.

    A named file maps to its output. Writers rarely name the file on a full disk (pyarrow,
    `file.write`), so a nameless storage error is put on the output written last: of the
    temporaries opened or written since they were created, the latest (ties: the later output);
    when none was, the first output.
    """
    if err.filename is not None:
        named = Path(os.fsdecode(err.filename)).absolute()
        for temp, final in zip(temps, finals, strict=True):
            if named in (temp.absolute(), final.absolute()):
                return final
        return None
    if err.errno not in STORAGE_ERRNOS or not finals:
        return None
    touched = [
        (stamp[1], index)
        for index, temp in enumerate(temps)
        if (stamp := _stamp(temp)) != created[temp]
    ]
    return finals[max(touched)[1]] if touched else finals[0]


def _reason(err: OSError) -> str:
    if err.errno is not None:
        reason = os.strerror(err.errno)
    else:
        text = str(err).strip()
        reason = text.splitlines()[0] if text else type(err).__name__
    if err.filename is not None and err.errno in (errno.ENOTDIR, errno.EEXIST, errno.ENOENT):
        reason += f": {os.fsdecode(err.filename)}"
    return reason


def _remove(path: Path) -> None:
    """Remove a temporary (a file, or a folder a writer made of it) without raising."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


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
