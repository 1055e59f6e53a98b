"""Streaming genome input: FASTA(.gz) files -> selected records -> windows of base codes -> contigs.

pyfaidx reads records as windows of about a chunk, never whole; gzip input is first streamed to an
uncompressed copy (and its .fai index) in a work directory, never next to the user's file; a remote
input (gs://, s3://) is copied to that directory first. Contigs are the A/C/G/T runs between N,
IUPAC letters and (soft_masked="drop") lower-case bases. docs/data.md.
read_in_memory reads a small genome whole instead (the in-memory training source: no pyfaidx, which is
imported only by the indexed path).
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from dnavec_jax.data import storage
from dnavec_jax.data.settings import parse_chromosome_selection, record_selected
from dnavec_jax.errors import DNAVecError
from dnavec_jax.tokenization import BASE_CODES, INVALID_CODE, acgt_runs

if TYPE_CHECKING:  # imported where it is used: the in-memory source and the tools run without it
    import pyfaidx

DEMO_FASTA = Path(__file__).resolve().parent / "human_chr22_20-21M.fa.gz"
_GZIP_MAGIC = b"\x1f\x8b"
_SNIFF_BYTES = 1 << 16
_COPY_BUFFER = 1 << 22
# A worker keeps local copies of remote sources up to this many bytes (least recently used go first):
# enough for a few mammalian genomes, and under Dataflow's default 25 GB worker disk.
LOCAL_COPY_BYTES = 8 << 30
_FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fas", ".ffn", ".frn", ".seq")

# Lower-case bases are not bases under soft_masked="drop": they end a contig like N.
_UPPER_ONLY_CODES = BASE_CODES.copy()
for _letter in b"acgt":
    _UPPER_ONLY_CODES[_letter] = INVALID_CODE


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file's bytes (read in blocks; genome-sized files welcome)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def base_code_table(soft_masked: str) -> np.ndarray:
    """Byte -> 2-bit code table: 'upper' reads a/c/g/t like A/C/G/T, 'drop' makes them invalid."""
    return BASE_CODES if soft_masked == "upper" else _UPPER_ONLY_CODES


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One input FASTA, made readable by pyfaidx."""

    path: str  # as given (absolute, or a URL)
    sha256: str  # of the file as given (compressed bytes for .gz)
    size_bytes: int
    gzipped: bool
    plain_path: str  # uncompressed FASTA that pyfaidx reads (a URL where the work dir is remote)
    index_path: str  # its .fai, in the work directory


@dataclasses.dataclass(frozen=True)
class GenomeRecord:
    """A selected FASTA record; `index` is its position among all selected records."""

    index: int
    name: str
    length: int
    file_index: int
    # Validation blocks chosen for the record's genome as a whole (pipeline.hold_out_in_every_genome),
    # on top of the per-record choice; empty for almost every record.
    held_out_blocks: tuple[int, ...] = ()


def genome_name(path: str) -> str:
    """A genome's name in the metadata: its file name without .gz and the FASTA suffix."""
    name = os.path.basename(path.rstrip("/"))
    if name.lower().endswith(".gz"):
        name = name[:-3]
    stem, suffix = os.path.splitext(name)
    return stem if suffix.lower() in _FASTA_SUFFIXES and stem else name


def read_fasta_list(path: str) -> list[str]:
    """The FASTA paths or URLs in a --fasta_list file: one a line, '#' starts a comment, blank lines skipped.

    Relative paths are read from the list's own directory, so a list works from any working directory.
    """
    try:
        text = storage.as_path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise DNAVecError(f"{path}: cannot read the FASTA list ({getattr(error, 'strerror', None) or error})") \
            from None
    remote_list = storage.is_remote(path)
    base = path.rsplit("/", 1)[0] if remote_list else os.path.dirname(os.path.abspath(path))
    entries = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not storage.is_remote(entry) and not os.path.isabs(entry):
            entry = f"{base}/{entry}" if remote_list else os.path.join(base, entry)
        entries.append(entry)
    if not entries:
        raise DNAVecError(f"{path}: the FASTA list names no file")
    return entries


def _check_fasta_head(head: bytes, path: str) -> None:
    """Rejects binary content and text that does not start with a '>' header."""
    if b"\x00" in head or any(byte >= 0x80 for byte in head):
        raise DNAVecError(f"{path}: binary content, not a FASTA file")
    for line in head.splitlines():
        text = line.strip()
        if not text or text.startswith(b";"):  # blank and ';' comment lines may precede the first record
            continue
        if not text.startswith(b">"):
            raise DNAVecError(f"{path}: not a FASTA file (the first line is not a '>' header)")
        return
    raise DNAVecError(f"{path}: not a FASTA file (no '>' header)")


def _check_exists(path: str | os.PathLike) -> int:
    location = storage.as_path(path)
    try:
        if not location.exists():
            raise DNAVecError(f"{path}: FASTA file not found")
        if location.is_dir():
            raise DNAVecError(f"{path}: is a directory, not a FASTA file")
        size = storage.size(location)
        if not storage.is_remote(path):
            with open(location, "rb"):
                pass
    except OSError as error:
        raise DNAVecError(f"{path}: cannot read ({error.strerror or error})") from None
    if size == 0:
        raise DNAVecError(f"{path}: empty file")
    return size


def check_fasta_paths(paths: Sequence[str]) -> None:
    """Cheap up-front checks (exists, is a file, not empty) before any work is done."""
    for path in paths:
        _check_exists(path)


def _decompress(path: Path, target: Path, name: str) -> None:
    try:
        with gzip.open(path, "rb") as source:
            head = source.read(_SNIFF_BYTES)
        if not head:
            raise DNAVecError(f"{name}: empty file (nothing after decompression)")
        _check_fasta_head(head, name)
        with gzip.open(path, "rb") as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink, _COPY_BUFFER)
    except EOFError:
        raise DNAVecError(f"{name}: truncated gzip file (ends before the end-of-stream marker)") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DNAVecError(f"{name}: corrupt gzip data ({error})") from None


def open_source(path: str, workdir: Path, file_index: int) -> SourceFile:
    """Validates one FASTA(.gz), decompresses it if needed, and builds its pyfaidx index in workdir
    (a local directory; a remote input is copied into it first)."""
    import pyfaidx  # here, not at the top: the in-memory source and the tools run without it (the GPU image)

    size = _check_exists(path)
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"source{file_index:03d}"
    if storage.is_remote(path):
        source = workdir / f"{stem}.download"
        try:
            storage.copy(path, source)
        except OSError as error:
            raise DNAVecError(f"{path}: cannot read ({error.strerror or error})") from None
    else:
        source = Path(path)
    sha256 = file_digest(source, "sha256")
    with open(source, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    gzipped = head.startswith(_GZIP_MAGIC)
    if gzipped:
        plain = workdir / f"{stem}.fa"
        _decompress(source, plain, path)
        if source.parent == workdir:
            source.unlink()  # the downloaded .gz: the uncompressed copy is all pyfaidx needs
    else:
        _check_fasta_head(head, path)
        plain = source
        if source.parent == workdir:
            plain = source.rename(workdir / f"{stem}.fa")
        elif source.suffix.lower() in (".gz", ".bgz", ".bz2", ".zip"):
            # pyfaidx picks its reader by file name: give a plain file a plain name.
            plain = workdir / f"{stem}.fa"
            os.symlink(source.resolve(), plain)
    index = workdir / f"{stem}.fa.fai"
    try:
        faidx = pyfaidx.Faidx(str(plain), indexname=str(index))
        faidx.close()
    except pyfaidx.FastaIndexingError as error:
        raise DNAVecError(f"{path}: not a valid FASTA file: {_one_line(error)}") from None
    except UnicodeDecodeError:
        raise DNAVecError(f"{path}: binary content, not a FASTA file") from None
    except ValueError as error:  # pyfaidx: 'Duplicate key "chr1"'
        raise DNAVecError(f"{path}: {_one_line(error)} (record names must be unique within a file)") from None
    return SourceFile(path if storage.is_remote(path) else str(source), sha256, size, gzipped, str(plain), str(index))


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def read_index(source: SourceFile) -> list[tuple[str, int]]:
    """(name, length) of every record, in file order, from the .fai index."""
    records = []
    for line in storage.as_path(source.index_path).read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        records.append((fields[0], int(fields[1])))
    return records


def select_records(sources: Sequence[SourceFile], chromosomes: str) -> tuple[list[GenomeRecord], list[str]]:
    """The records the selection keeps (in file, then record order) and the names it leaves out."""
    return _select([read_index(source) for source in sources], [source.path for source in sources], chromosomes)


def _select(indexes: Sequence[Sequence[tuple[str, int]]], paths: Sequence[str],
            chromosomes: str) -> tuple[list[GenomeRecord], list[str]]:
    """indexes: (name, length) of every record of each file, in file order."""
    selection = parse_chromosome_selection(chromosomes)
    selected: list[GenomeRecord] = []
    skipped: list[str] = []
    for file_index, index in enumerate(indexes):
        for name, length in index:
            if record_selected(name, selection):
                selected.append(GenomeRecord(len(selected), name, length, file_index))
            else:
                skipped.append(name)
    if not selected:
        files = ", ".join(paths)
        examples = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        raise DNAVecError(
            f"{files}: no record matches the chromosome selection {chromosomes!r} (records: {examples}); "
            "use --chromosomes all or list the names"
        )
    return selected, skipped


@dataclasses.dataclass(frozen=True)
class Genome:
    """FASTA files opened for reading: their sources and the records the chromosome selection keeps."""

    sources: list[SourceFile]
    records: list[GenomeRecord]
    skipped: list[str]  # record names the selection left out

    @property
    def bases(self) -> int:
        return sum(record.length for record in self.records)


def open_genome(paths: Sequence[str], work_dir: Path, chromosomes: str,
                open_sources: Callable[[Sequence[str], Path], list[SourceFile]] | None = None) -> Genome:
    """The one way every command opens a genome: checked paths, indexed sources, selected records.

    open_sources runs open_source over the paths (data prep runs it in worker processes or a Beam
    stage); by default one after the other, here.
    """
    check_fasta_paths(paths)
    if open_sources is None:
        sources = [open_source(path, Path(work_dir), index) for index, path in enumerate(paths)]
    else:
        sources = open_sources(paths, work_dir)
    records, skipped = select_records(sources, chromosomes)
    return Genome(sources, records, skipped)


def read_in_memory(paths: Sequence[str], chromosomes: str) -> tuple[list[GenomeRecord], InMemoryReader]:
    """The selected records of small FASTA(.gz) files, read whole into memory (one byte per base), and a
    reader of them that GenomeWorker takes in place of RecordReader. Records are named as pyfaidx names
    them (the header up to the first white space); any line width is accepted."""
    check_fasta_paths(paths)
    indexes, sequences = [], []
    for path in paths:
        records = _parse_fasta(path)
        indexes.append([(name, len(sequence)) for name, sequence in records])
        sequences.append([sequence for _, sequence in records])
    selected, _ = _select(indexes, list(paths), chromosomes)
    # Record order within a file = parse order, so (file, position in the file) finds each selected record.
    positions = {}
    for file_index, index in enumerate(indexes):
        for position, (name, _) in enumerate(index):
            positions[(file_index, name)] = position
    return selected, InMemoryReader({record.index: sequences[record.file_index][positions[(record.file_index,
                                                                                           record.name)]]
                                     for record in selected})


def _parse_fasta(path: str) -> list[tuple[str, bytes]]:
    """(name, bases) of every record of a FASTA(.gz) file, in file order."""
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == _GZIP_MAGIC
    try:
        if gzipped:
            with gzip.open(path, "rb") as handle:
                text = handle.read()
        else:
            text = Path(path).read_bytes()
    except EOFError:
        raise DNAVecError(f"{path}: truncated gzip file (ends before the end-of-stream marker)") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DNAVecError(f"{path}: corrupt gzip data ({error})") from None
    if not text:
        raise DNAVecError(f"{path}: empty file (nothing after decompression)")
    _check_fasta_head(text[:_SNIFF_BYTES], path)
    records: list[tuple[str, list[bytes]]] = []
    names: set[str] = set()
    for line in text.splitlines():  # lines before the first header are blank or ';' comments (checked above)
        if line.startswith(b">"):
            try:
                name = line[1:].decode("ascii").split()[0]
            except (UnicodeDecodeError, IndexError):
                raise DNAVecError(f"{path}: a record header is empty or not ASCII") from None
            if name in names:
                raise DNAVecError(f"{path}: duplicate record name {name!r} (record names must be unique within a "
                                  "file)")
            names.add(name)
            records.append((name, []))
        elif records:
            records[-1][1].append(line.strip())
    return [(name, b"".join(lines)) for name, lines in records]


class InMemoryReader:
    """RecordReader's interface over sequences held in memory (record index -> bytes)."""

    def __init__(self, sequences: dict[int, bytes]):
        self._sequences = {index: np.frombuffer(sequence, np.uint8) for index, sequence in sequences.items()}

    def read(self, record: GenomeRecord, start: int, end: int) -> np.ndarray:
        return self._sequences[record.index][start:max(start, end)]

    def close(self) -> None:
        pass


def bases_bar(total: int, desc: str, enabled: bool) -> tqdm:
    """A progress bar over genome bases (bp/s); a no-op when disabled."""
    return tqdm(total=total, unit="bp", unit_scale=True, desc=desc, smoothing=0.05, disable=not enabled)


class RecordReader:
    """Reads windows of records from the prepared sources (one per worker process).

    A source whose uncompressed copy lies in a remote work directory (a Beam stage staged it in a
    bucket) is copied to a local temporary directory on first use: pyfaidx reads local files. Those
    copies are kept up to local_copy_bytes, least recently used dropped first.
    """

    def __init__(self, sources: Sequence[SourceFile], local_copy_bytes: int = LOCAL_COPY_BYTES):
        self._sources = list(sources)
        self._open: collections.OrderedDict[int, pyfaidx.Faidx] = collections.OrderedDict()
        self._local_copy_bytes = local_copy_bytes
        self._local_dir: Path | None = None
        self._copies: collections.OrderedDict[int, int] = collections.OrderedDict()  # file index -> bytes

    def _faidx(self, file_index: int) -> pyfaidx.Faidx:
        import pyfaidx  # see open_source

        faidx = self._open.get(file_index)
        if faidx is not None:
            self._open.move_to_end(file_index)
            if file_index in self._copies:
                self._copies.move_to_end(file_index)
            return faidx
        source = self._sources[file_index]
        plain, index = source.plain_path, source.index_path
        if storage.is_remote(plain) or storage.is_remote(index):
            plain, index = self._copy_locally(file_index)
        faidx = self._open[file_index] = pyfaidx.Faidx(plain, indexname=index, rebuild=False)
        return faidx

    def _copy_locally(self, file_index: int) -> tuple[str, str]:
        if self._local_dir is None:
            self._local_dir = Path(tempfile.mkdtemp(prefix="dnavec-fasta-"))
        source = self._sources[file_index]
        plain = self._local_dir / f"source{file_index:03d}.fa"
        index = self._local_dir / f"source{file_index:03d}.fa.fai"
        try:
            storage.copy(source.plain_path, plain)
            storage.copy(source.index_path, index)
        except OSError as error:
            raise DNAVecError(f"{source.path}: cannot copy its staged copy {source.plain_path} to the local disk "
                              f"({error.strerror or error})") from None
        self._copies[file_index] = plain.stat().st_size
        while sum(self._copies.values()) > self._local_copy_bytes and len(self._copies) > 1:
            self._drop_copy(next(iter(self._copies)))
        return str(plain), str(index)

    def _drop_copy(self, file_index: int) -> None:
        faidx = self._open.pop(file_index, None)
        if faidx is not None:
            faidx.close()
        self._copies.pop(file_index)
        for path in self._local_dir.glob(f"source{file_index:03d}.fa*"):
            path.unlink()

    @property
    def local_copies(self) -> list[int]:
        """File indexes of the sources copied to the local disk now (least recently used first)."""
        return list(self._copies)

    def read(self, record: GenomeRecord, start: int, end: int) -> np.ndarray:
        """Raw bytes (uint8, case kept) of record[start:end], 0-based, end exclusive."""

        faidx = self._faidx(record.file_index)
        if end <= start:
            return np.zeros(0, dtype=np.uint8)
        text = faidx.from_file(record.name, start + 1, end)  # pyfaidx: 1-based, inclusive
        try:
            raw = text.encode("ascii")
        except UnicodeEncodeError:
            path = self._sources[record.file_index].path
            raise DNAVecError(
                f"{path}: record {record.name} has non-ASCII characters in bases {start}..{end}"
            ) from None
        if len(raw) != end - start:
            path = self._sources[record.file_index].path
            raise DNAVecError(
                f"{path}: record {record.name} ended early reading bases {start}..{end} "
                "(file changed or truncated since it was indexed)"
            )
        return np.frombuffer(raw, dtype=np.uint8)

    def close(self) -> None:
        for faidx in self._open.values():
            faidx.close()
        self._open.clear()
        if self._local_dir is not None:
            shutil.rmtree(self._local_dir, ignore_errors=True)
            self._local_dir = None
            self._copies.clear()


def split_runs(runs: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Cuts (start, end) runs at the given positions (segment edges): no run crosses a cut."""
    if len(cuts) == 0 or len(runs) == 0:
        return runs
    for cut in cuts:
        inside = (runs[:, 0] < cut) & (cut < runs[:, 1])
        if inside.any():
            left = runs[inside].copy()
            right = runs[inside].copy()
            left[:, 1] = cut
            right[:, 0] = cut
            runs = np.concatenate([runs[~inside], left, right])
    return runs[np.argsort(runs[:, 0], kind="stable")]


def contig_runs(raw: np.ndarray, table: np.ndarray, cuts: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Base codes of a window and its contigs: maximal valid runs, also cut at `cuts` (window offsets)."""
    codes = table[raw]
    return codes, split_runs(acgt_runs(codes), np.asarray(cuts, dtype=np.int64))


def fasta_records(path: str, work_dir: Path) -> tuple[list[tuple[str, int]], Iterator[tuple[str, np.ndarray]]]:
    """(name, length) of every record of a FASTA(.gz) file and an iterator over (label, raw letters), one at a time."""
    source = open_source(path, work_dir, 0)
    index = read_index(source)
    if not index:
        raise DNAVecError(f"{path}: no FASTA record")

    def read() -> Iterator[tuple[str, np.ndarray]]:
        reader = RecordReader([source])
        try:
            for position, (name, length) in enumerate(index):
                raw = reader.read(GenomeRecord(position, name, length, 0), 0, length)
                yield f"{path}: record {name!r}", raw
        finally:
            reader.close()

    return index, read()
