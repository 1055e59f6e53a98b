"""Outputs that appear whole or not at all: the one place for temp-then-rename writes.

Every tool that writes user-facing files (export, vectors, embed, tf-idf,
attention, classify) goes through here, so an error or Ctrl-C never leaves a
half-written file or directory, and files get the usual umask permissions
(mkstemp/mkdtemp create 0600/0700).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def umask() -> int:
    """The process umask (os.umask can only be read by setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[io.IOBase], None], binary: bool = True) -> None:
    """Writes through `write(handle)` into a temporary file next to `path`, then renames it into place."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"newline": "", "encoding": "utf-8"})
                       ) as stream:
            write(stream)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_directory(staging: Path, output_dir: Path, overwrite: bool, not_empty: Callable[[], Exception]) -> None:
    """Renames a finished staging directory to output_dir.

    A non-empty output_dir is replaced only with `overwrite` (else `not_empty()` is
    raised: it may have appeared while the staging directory was written); the old
    one is moved aside first and deleted after, so a failure never loses both.
    """
    old = None
    if output_dir.exists():
        if any(output_dir.iterdir()):
            if not overwrite:
                raise not_empty()
            old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
            os.replace(output_dir, old / "replaced")
        else:
            output_dir.rmdir()
    os.replace(staging, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
