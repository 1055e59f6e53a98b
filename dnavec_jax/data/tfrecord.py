"""tf.train.Example serialisation and TFRecord files, without TensorFlow in the worker processes.

Importing TensorFlow costs each worker about 750 MB, which broke the 2 GB prep budget: the Example
protos come from the copy tensorflow-datasets ships, the framing is TFRecord's documented format
with google-crc32c checksums, and tests read the files back with tf.data (docs/data.md).
"""

from __future__ import annotations

import struct

import google_crc32c
import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

from dnavec_jax.data import storage
from dnavec_jax.data.features import ALL_FEATURES, TRACE_FEATURES, feature_shapes

_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC32C rotated right by 15 bits plus a constant."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class TFRecordWriter:
    """Writes records to one TFRecord file (uncompressed), a local path or a URL (gs://...).

    The file is created at the first record: a writer that gets none leaves no file behind.
    """

    def __init__(self, path: str):
        self.path = path
        self._file = None
        self.num_records = 0
        self.num_bytes = 0

    def write(self, record: bytes) -> None:
        if self._file is None:
            self._file = storage.as_path(self.path).open("wb")
        length = struct.pack("<Q", len(record))
        framed = b"".join((
            length, struct.pack("<I", masked_crc32c(length)), record, struct.pack("<I", masked_crc32c(record)),
        ))
        self._file.write(framed)
        self.num_records += 1
        self.num_bytes += len(framed)

    def close(self) -> int:
        """Closes the file and returns its size in bytes (0, and no file, if nothing was written)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        return self.num_bytes


def read_records(path: str):
    """Yields the records of a TFRecord file, checking both checksums (for tests and tools)."""
    with open(path, "rb") as handle:
        while header := handle.read(12):
            (length,) = struct.unpack("<Q", header[:8])
            if struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
                raise ValueError(f"{path}: corrupt record length")
            data = handle.read(length)
            (crc,) = struct.unpack("<I", handle.read(4))
            if len(data) != length or crc != masked_crc32c(data):
                raise ValueError(f"{path}: corrupt record")
            yield data


class ExampleEncoder:
    """Serialises examples to tf.train.Example bytes.

    One message is reused (about 2x faster than building one per example); its
    repeated fields are cleared and refilled in place, which keeps their
    storage (upb allocates from a per-message arena that is only freed with the
    message: CopyFrom or new sub-messages per example would grow it by ~4 KB
    per example). input_mask, with few distinct values, is refilled from cached
    Python lists.
    """

    def __init__(self, seq_length: int, max_predictions: int):
        self._seq_length = seq_length
        self._example = tf_example_pb2.Example()
        features = self._example.features.feature
        shapes = feature_shapes(seq_length, max_predictions)
        for name in ALL_FEATURES:
            if shapes[name][1] == np.float32:
                features[name].float_list.SetInParent()
            else:
                features[name].int64_list.SetInParent()
        features["segment_ids"].int64_list.value.extend([0] * seq_length)  # one segment
        # The value containers stay valid for the message's lifetime: look them up once.
        self._input_ids = features["input_ids"].int64_list.value
        self._input_mask = features["input_mask"].int64_list.value
        self._positions = features["masked_lm_positions"].int64_list.value
        self._labels = features["masked_lm_ids"].int64_list.value
        self._weights = features["masked_lm_weights"].float_list.value
        self._scalars = [features[name].int64_list.value for name in TRACE_FEATURES]
        for container in self._scalars:
            container.append(0)
        self._mask_values: dict[int, list[int]] = {}

    def encode(self, input_ids: np.ndarray, num_real: int, masked_lm_positions: np.ndarray,
               masked_lm_ids: np.ndarray, masked_lm_weights: np.ndarray, record_index: int, start_offset: int,
               dupe_index: int) -> bytes:
        """One example; num_real = positions holding [CLS], k-mers or [SEP] (the ones of input_mask)."""
        num_real = int(num_real)
        mask = self._mask_values.get(num_real)
        if mask is None:
            mask = self._mask_values[num_real] = [1] * num_real + [0] * (self._seq_length - num_real)
        for container, values in ((self._input_ids, input_ids.tolist()), (self._input_mask, mask),
                                  (self._positions, masked_lm_positions.tolist()),
                                  (self._labels, masked_lm_ids.tolist()), (self._weights, masked_lm_weights.tolist())):
            del container[:]
            container.extend(values)
        for container, value in zip(self._scalars, (record_index, start_offset, dupe_index)):
            container[0] = int(value)
        # deterministic=True sorts the feature map: upb's map order is seeded per process, and the
        # shards must be byte-identical whatever the number of workers.
        return self._example.SerializeToString(deterministic=True)


def decode_example(serialized: bytes) -> dict[str, np.ndarray]:
    """Parses one serialized example into numpy arrays (tests and tools; no TensorFlow)."""
    example = tf_example_pb2.Example.FromString(serialized)
    out = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        values = getattr(feature, kind).value
        out[name] = np.asarray(values, dtype=np.float32 if kind == "float_list" else np.int64)
    return out
