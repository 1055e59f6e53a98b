"""Local paths and object-store URLs (gs://, s3://, az://, hf://) behind one pathlib-like API.

Remote paths go through etils.epath, the file-system layer TensorFlow Datasets writes its datasets
with (tf.io.gfile where TensorFlow is installed, else fsspec); local paths stay pathlib.Path, so
everything that worked on a local disk works as before. pyfaidx reads local files only: remote
inputs are copied to a local disk first (docs/data.md, "Remote inputs and outputs").
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from etils import epath

from dnavec_jax.errors import DNAVecError

# The URL schemes etils.epath knows (etils/epath/gpath.py); anything else is a one-line error.
REMOTE_SCHEMES = ("gs", "s3", "az", "hf")
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_COPY_BUFFER = 1 << 22
# Requests in flight at once where many small objects are read or renamed (a bucket answers each in tens
# of milliseconds; a local disk does not mind).
PARALLEL_REQUESTS = 32


def scheme(path: str | os.PathLike) -> str | None:
    match = _URL_RE.match(os.fspath(path))
    return match.group(1).lower() if match else None


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL (gs://bucket/x); a local path, absolute or relative, is not remote."""
    return scheme(path) is not None


def check_supported(path: str | os.PathLike) -> None:
    """One-line error for a URL whose scheme no file system here can read (http://, ftp://, file://)."""
    found = scheme(path)
    if found is not None and found not in REMOTE_SCHEMES:
        raise DNAVecError(
            f"{path}: unsupported URL scheme {found}://; use a local path or "
            + ", ".join(f"{s}://" for s in REMOTE_SCHEMES)
            + (" (download it first, e.g. with curl -O)" if found in ("http", "https", "ftp") else "")
        )


def as_path(path: str | os.PathLike) -> Path | epath.Path:
    """pathlib.Path for a local path, an etils.epath.Path (same methods) for a URL."""
    check_supported(path)
    return epath.Path(os.fspath(path)) if is_remote(path) else Path(path)


def size(path: Path | epath.Path) -> int:
    stat = path.stat()
    return stat.st_size if isinstance(path, Path) else stat.length


def rmtree(path: Path | epath.Path) -> None:
    """Removes a directory tree if it exists (errors ignored, like shutil.rmtree(ignore_errors=True))."""
    if isinstance(path, Path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        path.rmtree(missing_ok=True)
    except OSError:
        pass


def holds_files(directory: Path | epath.Path) -> bool:
    """True if a file lies anywhere below the directory (epath refuses rglob on object stores: walk it)."""
    if isinstance(directory, Path):
        return any(path.is_file() for path in directory.rglob("*"))
    return any(files for _, _, files in directory.walk())


def copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Streams a file from/to a local path or a URL (a few MB in memory at a time)."""
    with as_path(source).open("rb") as reader, as_path(target).open("wb") as writer:
        shutil.copyfileobj(reader, writer, _COPY_BUFFER)
