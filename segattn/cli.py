"""What the entry points (train.py, eval.py, export.py) share so that a mistake ends in one paragraph.

A mistake in the command line or the data (a wrong key, a missing file, a batch too small for a
head) raises a ``ValueError`` / ``OSError`` whose message names the key and the fix; here it is
printed as that one paragraph, without the Python traceback, and the process exits with status 1.
``HYDRA_FULL_ERROR=1`` shows the traceback, as for Hydra's own errors. A run stopped by SIGINT or
SIGTERM exits with the shell's status for the signal (130, 143) after saying how to continue.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys

from .engine.stopping import Interrupted

# Errors whose message is the whole story (ours name the key or file); anything else is a bug
# and keeps its traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


@contextlib.contextmanager
def user_errors(prog: str):
    """``with user_errors("train.py"):`` around an entry point's work (see the module docstring)."""
    try:
        yield
    except Interrupted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except USER_ERRORS as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{prog}: error: {e}\n(set HYDRA_FULL_ERROR=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def override_value(argv: list[str], key: str) -> str | None:
    """The value ``key=VALUE`` (or ``+key=`` / ``++key=``) gives on the command line, else None."""
    value = None
    for arg in argv:
        m = re.fullmatch(rf"\+{{0,2}}{re.escape(key)}=(.*)", arg)
        if m:
            value = m.group(1).strip("'\"")
    return value


def check_run_dir(argv: list[str], default: str) -> None:
    """Stop, before Hydra opens its log file there, when the run directory cannot be written:
    ``hydra.run.dir`` as given (a read-only folder or disk, a path under a file), else ``default``
    (the folder the configured ``hydra.run.dir`` lives in, relative to the working directory)."""
    if "--multirun" in argv or "-m" in argv:
        return
    given = override_value(argv, "hydra.run.dir")
    path = given if given and "${" not in given else default
    key = f"hydra.run.dir={given}" if given else f"the run directory under {os.path.abspath(default)!r}"
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise SystemExit(f"{key}: {parent!r} is a file, so no folder can be made under it; "
                         f"set hydra.run.dir to a folder path")
    # Hydra creates the folder next anyway; creating it (and a probe file) here is the only test that
    # covers permissions, read-only disks and pseudo file systems alike.
    probe = os.path.join(path, ".segattn_write_probe")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"\0")
        os.remove(probe)
    except OSError as e:
        why = "is on a read-only disk" if _read_only_mount(parent) else f"cannot be written ({e.strerror})"
        raise SystemExit(f"{key}: {os.path.abspath(path)!r} {why}, so the run cannot save anything there; "
                         f"set hydra.run.dir to a writable folder") from None


def _read_only_mount(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


@contextlib.contextmanager
def remove_if_refused(run_dir: str):
    """``with remove_if_refused(run_dir):`` around an entry point's work: when it refuses (exit status 1,
    a mistake of the command line or the data) before writing any result, the run directory Hydra
    made for it (``.hydra/``, an empty ``checkpoints/``) is removed again, and its date folder when that
    is left empty. A directory that held anything else before (a resumed run, a folder of the user's)
    is left as it is, as is one where training wrote a checkpoint or TensorBoard events."""
    run_dir = os.path.abspath(run_dir)
    fresh = os.path.isdir(run_dir) and set(os.listdir(run_dir)) <= {".hydra"} and run_dir != os.getcwd()
    try:
        yield
    except SystemExit as e:
        if e.code == 1 and fresh and not _holds_results(run_dir):
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(run_dir))  # outputs/<date>/, only when empty
        raise


def _holds_results(run_dir: str) -> bool:
    """Whether a run wrote something worth keeping: a checkpoint, TensorBoard events, metrics."""
    for _, _, files in os.walk(run_dir):
        if any(f.endswith(".pt") or f.startswith("events.out.tfevents")
               or f in ("metrics.json", "eval.json", "dataset_check.txt") for f in files):
            return True
    return False
