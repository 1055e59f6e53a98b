"""A stand-in for Google Cloud Storage in tests: gs://BUCKET/KEY is ROOT/BUCKET/KEY on the local disk.

etils.epath (what data prep and TFDS read and write URLs with) takes gs:// to fsspec when EPATH_USE_TF is
false; this registers an fsspec file system for gs:// that maps URLs to a directory, in this process only.
Like an object store it needs no directories before a write; listings come back as bucket/key, as gcsfs
returns them.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import fsspec
from etils.epath import backend, gpath
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import _registry
from fsspec.utils import stringify_path


class BucketOnDisk(LocalFileSystem):
    protocol = ("gs", "gcs")
    root = ""  # set by fake_gcs()

    def __init__(self, *args, **kwargs):  # epath passes gcsfs's finalize_on_close=True
        super().__init__(auto_mkdir=True)

    @classmethod
    def _strip_protocol(cls, path):
        path = stringify_path(path)
        if path.startswith(("gs://", "gcs://")):
            path = f"{cls.root}/{path.split('://', 1)[1]}"
        return super()._strip_protocol(path)

    def _to_key(self, path: str) -> str:
        return path[len(self.root) + 1:] if path.startswith(self.root + "/") else path

    def glob(self, path, **kwargs):
        return [self._to_key(p) for p in super().glob(path, **kwargs)]

    def mkdir(self, path, create_parents=True, **kwargs):  # an object store has no directories to make
        super().makedirs(path, exist_ok=True)


@contextlib.contextmanager
def fake_gcs(root: Path, monkeypatch):
    """gs:// URLs go to directories below root while the context is open (this process only)."""
    monkeypatch.setenv("EPATH_USE_TF", "false")
    monkeypatch.setattr(BucketOnDisk, "root", str(root))
    saved = {name: _registry.get(name) for name in BucketOnDisk.protocol}
    for name in BucketOnDisk.protocol:
        fsspec.register_implementation(name, BucketOnDisk, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()  # epath keeps one file system per protocol...
    gpath._is_tf_installed.cache_clear()  # ...and its first answer to "use TensorFlow's gfile?"
    try:
        yield root
    finally:
        for name, implementation in saved.items():
            if implementation is None:
                _registry.pop(name, None)
            else:
                _registry[name] = implementation
        backend.fsspec_backend._get_filesystem.cache_clear()
        BucketOnDisk.clear_instance_cache()
        monkeypatch.undo()
        gpath._is_tf_installed.cache_clear()
