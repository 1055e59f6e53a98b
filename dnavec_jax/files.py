"""Output files: the one output-path policy and writes that appear whole or not at all.

Policy (every tool, checked before any slow work): an output that exists is replaced only
with --overwrite. A directory output (export-hf, vectors) must be absent or empty; a tool
that writes named files into a directory (tfidf, attention, classify) refuses only when one
of those names exists; a file output (embed, predict) needs an existing parent directory.
Writes go to a temporary file or directory next to the target and are renamed into place,
so an error or Ctrl-C never leaves a half-written output, and everything gets the usual
umask permissions (mkstemp/mkdtemp create 0600/0700). docs/outputs.md lists the outputs.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from dnavec_jax.errors import DNAVecError

# ---- the output-path policy ----------------------------------------------------------

def check_output_dir(path: str | os.PathLike, flag: str, overwrite: bool) -> Path:
    """A directory that is the output as a whole: absent, empty, or (with overwrite) replaced. Absolute path."""
    path = Path(path).absolute()
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise DNAVecError(f"{flag} {path} exists and is not a directory")
        if any(path.iterdir()) and not overwrite:
            raise not_empty_error(path, flag)
    return path


def not_empty_error(path: Path, flag: str) -> DNAVecError:
    return DNAVecError(f"{flag} {path} exists and is not empty (pass --overwrite to replace it)")


def check_outputs_in_dir(path: str | os.PathLike, flag: str, names: Iterable[str], overwrite: bool,
                         create: bool = True) -> Path:
    """A directory that receives the files/directories `names`: refused if one of them exists, unless overwrite.

    Creates the directory (parents too) unless create=False; returns it as given.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DNAVecError(f"{flag} {path} exists and is not a directory")
    existing = [name for name in names if (path / name).exists()]
    if existing and not overwrite:
        raise DNAVecError(f"{flag} {path}: {existing[0]} exists (pass --overwrite to replace it)")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DNAVecError(f"{flag} {path}: cannot create the output directory ({error.strerror})") from None
    return path


def check_output_file(path: str | os.PathLike, flag: str, overwrite: bool, suffix: str | None = None) -> Path:
    """A single output file: refused if it exists (unless overwrite) or its directory does not. Absolute path."""
    given = path
    path = Path(path).absolute()
    if suffix is not None and path.suffix != suffix:
        raise DNAVecError(f"{flag} {given}: must end in {suffix}")
    if path.is_dir():
        raise DNAVecError(f"{flag} {given}: is a directory")
    if path.exists() and not overwrite:
        raise DNAVecError(f"{flag} {given} exists (pass --overwrite to replace it)")
    if not path.parent.is_dir():
        raise DNAVecError(f"{flag} {given}: directory {path.parent} does not exist")
    return path


# ---- atomic writes -------------------------------------------------------------------

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


@contextlib.contextmanager
def staged_directory(output_dir: Path, flag: str, overwrite: bool) -> Iterator[Path]:
    """Yields an empty temporary directory next to output_dir; when the block succeeds, its contents get
    umask permissions and it replaces output_dir (see replace_directory); when it fails, it is deleted."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    try:
        yield staging
        commit_directory(staging, output_dir, flag, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def partial_directory(output_dir: Path) -> Path:
    """Where a resumable directory output (embed's shards) is built: a hidden sibling with a fixed name, so
    that a later run finds an interrupted one. It holds no index of a finished output until commit_directory
    renames it into place."""
    return output_dir.parent / f".{output_dir.name}.partial"


def commit_directory(staging: Path, output_dir: Path, flag: str, overwrite: bool) -> None:
    """A finished staging directory gets umask permissions and replaces output_dir (replace_directory)."""
    set_umask_permissions(staging)
    replace_directory(staging, output_dir, overwrite, lambda: not_empty_error(output_dir, flag))


def set_umask_permissions(directory: Path) -> None:
    """The usual permissions for a directory tree written through mkdtemp or safetensors (0700/0600)."""
    mask = umask()
    for path in directory.rglob("*"):
        os.chmod(path, 0o777 & ~mask if path.is_dir() else 0o666 & ~mask)
    os.chmod(directory, 0o777 & ~mask)


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
