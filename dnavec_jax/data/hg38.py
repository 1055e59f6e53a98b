"""Download of UCSC hg38.fa.gz: resumable (HTTP Range), checked, one-line errors when offline.

    python data_prep/download_hg38.py --output_dir data_cache/fasta

Checks the final size against the server's Content-Length, the MD5 against UCSC's md5sum.txt and the
gzip magic; the partial file (hg38.fa.gz.part) is renamed only when complete. docs/data.md.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from dnavec_jax.data.fasta import file_digest
from dnavec_jax.errors import DNAVecError

HG38_URL = "https://hgdownload.soe.ucsc.edu/goldenPath/hg38/bigZips/hg38.fa.gz"
MD5SUM_URL = "https://hgdownload.soe.ucsc.edu/goldenPath/hg38/bigZips/md5sum.txt"
_BLOCK = 1 << 20
_TIMEOUT_S = 30


def _open(url: str, start: int = 0):
    request = urllib.request.Request(url, headers={"User-Agent": "dnavec-jax"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        return urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and start:  # nothing left to fetch: the part file is already complete
            return None
        raise DNAVecError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DNAVecError(
            f"{url}: cannot download ({reason}); are you offline? "
            "Fetch hg38.fa.gz by other means and pass it with --fasta"
        ) from None


def _published_md5(url: str, file_name: str) -> str | None:
    try:
        with _open(url) as response:
            listing = response.read().decode("ascii", errors="replace")
    except DNAVecError as error:
        print(f"warning: {error}; the MD5 check is skipped", file=sys.stderr)
        return None
    for line in listing.splitlines():
        match = re.match(r"^([0-9a-f]{32})\s+\*?(\S+)$", line.strip())
        if match and match.group(2) == file_name:
            return match.group(1)
    return None


def download_hg38(output_dir: str | os.PathLike, url: str = HG38_URL, md5sum_url: str | None = MD5SUM_URL,
                  progress: bool = True) -> Path:
    """Downloads (or resumes) hg38.fa.gz into output_dir and returns its path."""
    output_dir = Path(output_dir)
    file_name = url.rsplit("/", 1)[-1]
    target = output_dir / file_name
    if target.is_file():
        return target
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DNAVecError(f"{output_dir}: cannot create the output directory ({error.strerror})") from None
    part = output_dir / (file_name + ".part")
    have = part.stat().st_size if part.exists() else 0
    response = _open(url, have)
    if response is None:
        total = have
    else:
        with response:
            if have and response.status == 206:
                content_range = response.headers.get("Content-Range", "")
                total = int(content_range.rsplit("/", 1)[-1]) if "/" in content_range else None
                mode = "ab"
            else:  # the server ignored the Range header: start again
                have, mode = 0, "wb"
                length = response.headers.get("Content-Length")
                total = int(length) if length else None
            bar = None
            if progress:

                bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=file_name)
            try:
                with open(part, mode) as sink:
                    while block := response.read(_BLOCK):
                        sink.write(block)
                        if bar is not None:
                            bar.update(len(block))
            except (urllib.error.URLError, OSError) as error:
                raise DNAVecError(
                    f"{url}: download interrupted ({error}); run again to resume from {part.stat().st_size:,} bytes"
                ) from None
            finally:
                if bar is not None:
                    bar.close()
    size = part.stat().st_size
    if total is not None and size != total:
        raise DNAVecError(f"{part}: {size:,} of {total:,} bytes; run again to resume")
    with open(part, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            raise DNAVecError(f"{part}: not gzip data; delete it and run again")
    if md5sum_url:
        expected = _published_md5(md5sum_url, file_name)
        if expected is not None and file_digest(part, "md5") != expected:
            raise DNAVecError(f"{part}: MD5 differs from UCSC's md5sum.txt; delete it and run again")
    part.rename(target)
    return target
