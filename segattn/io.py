"""Nothing is written half-way: every file segattn writes goes through ``atomic_write``."""

from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", fsync: bool = False):
    """Open ``<path>.tmp`` for writing; when the block ends it is renamed over ``path``.

    The temporary file sits beside the target (same file system, so the rename is atomic): a reader
    sees the old file or the new one, never a part. On any error the temporary file is removed and
    the error propagates. ``fsync`` puts the data on disk before the rename (checkpoints), so a power
    cut cannot leave an empty file under the final name.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    try:
        with open(tmp, mode) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
