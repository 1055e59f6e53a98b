"""Writes a dinucleotide-preserving shuffle of a genome FASTA: the shuffled-genome control of docs/classify.md.

  python scripts/shuffle_genome.py --output data_cache/chr22_shuffled.fa.gz          # the embedded chr22
  python run_pretrain.py --config configs/demo.py --workdir runs/demo_shuffled \
      --config.data.data_dir=data_cache/chr22_shuffled_demo \
      --config.data.prep.fasta="('data_cache/chr22_shuffled.fa.gz',)"

Each A/C/G/T run of each record (a contig: N and IUPAC letters end it, as in data prep) is replaced by a
uniformly random sequence with the same dinucleotide counts, first and last base (Altschul & Erickson
1985, by a random Eulerian walk as in Kandel et al. 1996): the same composition and the same copyable
overlaps between k-mer tokens, with no genome left beyond dinucleotides. Other letters stay where they
are, records keep their names and lengths (so data prep holds out the same blocks), bases are written
upper-case. A model pretrained on it can learn to copy from overlapping tokens, not the genome.
Deterministic in --seed.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnavec_jax.errors import DNAVecError, run_cli

LINE = 60  # bases per FASTA line


def dinucleotide_shuffle(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random sequence of base codes (0..3) with the dinucleotide counts, first and last base of
    `codes`: the edges s[i] -> s[i+1] walked in a random Eulerian order whose last exit from every letter
    but the final one lies on a tree towards the final letter (Kandel et al.), so the walk uses every edge."""
    codes = np.asarray(codes, np.uint8)
    if len(codes) < 3:
        return codes.copy()
    first, final = int(codes[0]), int(codes[-1])
    exits = [list(codes[1:][codes[:-1] == letter]) for letter in range(4)]
    while True:  # a random last exit per letter, until they form a tree towards `final` (a few tries at most)
        last = {letter: int(rng.integers(len(exits[letter]))) for letter in range(4)
                if letter != final and exits[letter]}
        if all(_reaches(letter, final, {v: exits[v][i] for v, i in last.items()}) for letter in last):
            break
    order = []
    for letter in range(4):
        edges = list(exits[letter])
        tail = [edges.pop(last[letter])] if letter in last else []
        order.append([edges[i] for i in rng.permutation(len(edges))] + tail)
    out = np.empty_like(codes)
    out[0], used = first, [0, 0, 0, 0]
    for position in range(1, len(codes)):
        previous = out[position - 1]
        out[position] = order[previous][used[previous]]
        used[previous] += 1
    return out


def _reaches(letter: int, final: int, step: dict[int, int]) -> bool:
    seen = set()
    while letter != final:
        if letter in seen:
            return False
        seen.add(letter)
        letter = step[letter]
    return True


def shuffled_records(path: str, seed: int) -> Iterator[tuple[str, bytes]]:
    """(name, shuffled letters) of every record of a FASTA(.gz) file, each A/C/G/T run shuffled on its own."""
    from dnavec_jax.data.fasta import fasta_records
    from dnavec_jax.tokenization import BASE_CODES, acgt_runs

    with tempfile.TemporaryDirectory(prefix="dnavec_shuffle_") as work_dir:
        index, records = fasta_records(path, Path(work_dir))
        for number, ((name, _), (_, raw)) in enumerate(zip(index, records)):
            rng = np.random.default_rng([seed, number])
            codes = BASE_CODES[raw]
            out = raw.copy()
            for start, end in acgt_runs(codes):
                out[start:end] = np.frombuffer(b"ACGT", np.uint8)[dinucleotide_shuffle(codes[start:end], rng)]
            yield name, out.tobytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fasta", default=None, help="FASTA(.gz) to shuffle (default: the embedded 1 Mbp of chr22)")
    parser.add_argument("--output", required=True, help="output FASTA; gzipped when it ends in .gz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)

    def run() -> int:
        from dnavec_jax.data.fasta import DEMO_FASTA
        from dnavec_jax.files import write_atomic

        output = Path(args.output)
        if output.exists() and not args.overwrite:
            raise DNAVecError(f"--output {output} exists (pass --overwrite to replace it)")
        if not output.parent.is_dir():
            raise DNAVecError(f"--output {output}: no such directory {output.parent}")
        source = str(args.fasta or DEMO_FASTA)

        def write(handle) -> None:
            stream = gzip.GzipFile(fileobj=handle, mode="wb", mtime=0) if output.suffix == ".gz" else handle
            for name, letters in shuffled_records(source, args.seed):
                stream.write(f">{name}\n".encode())
                for at in range(0, len(letters), LINE):
                    stream.write(letters[at:at + LINE] + b"\n")
            if stream is not handle:
                stream.close()

        write_atomic(output, write)
        print(f"wrote {output}: every A/C/G/T run of {source} shuffled, dinucleotide counts kept (seed {args.seed})")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
