"""Atomic file writes: a reader never sees half a file, an interrupted writer leaves the old one.

A leaf module (standard library only, nothing from the package), so that the data layer (the
decode cache), the run directory, evaluation, reports and benchmarks all write the same way
without importing each other.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Write a file atomically: ``write(fileobj)`` into a temporary file ``.NAME.*.tmp`` beside it, then rename
    over ``path``. An OSError (a full disk, say) names ``path``; the old file is left whole and the
    temporary file removed (one a killed process leaves is for the directory's owner to remove)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _naming(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _naming(e, path) from None
        raise


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` with ``path`` as its file name when it has none (a failed write names only its descriptor)."""
    if e.errno is None or e.filename is not None:
        return e
    return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))


def save_text(path: str | os.PathLike, text: str) -> None:
    """``text`` as UTF-8, atomically."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_json(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented JSON with a final newline, atomically (config.json, eval.json, bench results)."""
    save_text(path, json.dumps(obj, indent=2) + "\n")
