"""One clear line for every failure a user can cause or meet: what, which file or key, what to do.

The CLI prints it (a traceback only with ``--debug``) and the Prefect flow reports it, so both
say the same thing.
"""

from __future__ import annotations

import errno
import io
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

# Our own errors already name the file or key and what to do: they are shown as they are.
_CLEAR = (ValueError, LookupError, RuntimeError)

_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free space there (nothing written before was lost) and run again",
    errno.EDQUOT: "the disk quota is used up: free space there and run again",
    errno.EROFS: "the file system is read-only: point the setting at a writable folder",
    errno.EACCES: "permission denied: make it writable for this user, or point the setting elsewhere",
    errno.EPERM: "not permitted: make it writable for this user, or point the setting elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another folder",
    errno.EISDIR: "it is a folder where a file was expected: remove it or choose another path",
}


def _free_space(path: str | None) -> str:
    folder = Path(path).parent if path else None
    while folder is not None and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder is None:
        return ""
    try:
        return f" ({shutil.disk_usage(folder).free / 2**20:,.0f} MiB free in {folder})"
    except OSError:
        return ""


def _written_file(exc: BaseException) -> str | None:
    """The file a nameless OSError was writing (a full disk names none, and neither do writes in
    libraries such as MLflow's artifact copies): the innermost file open for writing in the frames
    the error passed through, which the traceback keeps."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            mode, name = getattr(value, "mode", ""), getattr(value, "name", None)
            if isinstance(value, io.IOBase) and isinstance(name, str) and set(str(mode)) & set("wax+"):
                return name
    return None


def show_logs() -> None:
    """Our INFO lines and every library's warnings on stderr: a library's INFO lines (the ONNX
    optimiser's "Replaced initializer ..." by the dozen) say nothing a user acts on."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("nectargan_core").setLevel(logging.INFO)


def describe_failure(exc: BaseException) -> str:
    """The message for ``exc``: as it is for our errors, with the path and advice for the system's."""
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        path = exc.filename or _written_file(exc)
        advice = _OS_ADVICE.get(exc.errno or 0, "check the path and the disk")
        space = _free_space(str(path) if path else None) if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        return f"{path or 'a file the system did not name'}: {exc.strerror or exc}; {advice}{space}"
    if isinstance(exc, (FileNotFoundError, *_CLEAR)):
        return str(exc)
    name = type(exc).__name__
    if type(exc).__module__.startswith(("mlflow", "sqlalchemy")):
        return f"the tracking store failed ({name}: {exc}); check tracking.uri and that its server or database works"
    return f"unexpected {name}: {exc} (run again with --debug for the traceback, and report it)"


def exit_code(entry: Callable[[], int], debug: bool, interrupted: str) -> int:
    """Run an entry point (the CLI, the flow): its own code, 2 and one line for a failure (the traceback
    with ``debug``), or 130 and ``interrupted`` (what was kept, how to continue) for Ctrl+C or SIGTERM."""
    try:
        return entry()
    except Exception as exc:
        if debug:
            raise
        print(f"error: {describe_failure(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        return 130
