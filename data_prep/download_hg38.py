"""Download UCSC hg38.fa.gz (resumable). Thin front end to dnavec_jax/data/hg38.py.

    python data_prep/download_hg38.py --output_dir data_cache/fasta
    python data_prep/prepare_data.py --fasta data_cache/fasta/hg38.fa.gz --data_dir data_cache/genome
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnavec_jax.data.hg38 import HG38_URL, MD5SUM_URL, download_hg38
from dnavec_jax.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--url", default=HG38_URL, help="mirror of hg38.fa.gz")
    parser.add_argument("--md5sum_url", default=MD5SUM_URL, help="md5sum.txt listing the file ('' to skip)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    path = download_hg38(args.output_dir, args.url, args.md5sum_url or None, progress=not args.quiet)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
