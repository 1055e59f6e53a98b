"""Regenerates the figures of docs/outputs.md from a trained model: the tf-idf word cloud and an attention heat map.

    python scripts/make_output_figures.py --model runs/demo
    python scripts/make_output_figures.py --model runs/demo --fasta genome.fa.gz --num_sequences 512

Runs `dnavec tfidf` on the FASTA (default: the embedded 1 Mbp chr22 demo corpus)
with the model's k range and window, then `dnavec attention` with that tf-idf
table, in a temporary directory, and copies into --images_dir (default
docs/images/):
  tfidf_wordcloud.png         the top-100 word cloud (the paper's Figure 4)
  attention_overlap.png       share of attention on the token itself + overlapping k-mers
  attention_top_tfidf.png     share of attention on the top-100 tf-idf k-mers
The full outputs (CSVs, every heat map, summaries) are kept with --keep DIR.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dnavec_jax import cli  # noqa: E402
from dnavec_jax.data.fasta import DEMO_FASTA  # noqa: E402
from dnavec_jax.errors import run_cli  # noqa: E402
from dnavec_jax.tools import loaded_model  # noqa: E402

FIGURES = {"tfidf": ["tfidf_wordcloud.png"], "attention": ["attention_overlap.png", "attention_top_tfidf.png"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="training run directory or Hugging Face export")
    parser.add_argument("--fasta", default=str(DEMO_FASTA), help="default: the embedded chr22 demo corpus")
    parser.add_argument("--chromosomes", default="all")
    parser.add_argument("--num_sequences", type=int, default=256)
    parser.add_argument("--images_dir", default=str(REPO / "docs" / "images"))
    parser.add_argument("--keep", default=None, help="also keep all outputs in this directory")
    args = parser.parse_args()

    def run() -> int:
        loaded = loaded_model.load_model(args.model)  # the model's k range and window for tf-idf
        with tempfile.TemporaryDirectory(prefix="dnavec_figures_") as tmp:
            out = Path(args.keep) if args.keep else Path(tmp)
            status = cli.main(["tfidf", "--fasta", args.fasta, "--output_dir", str(out / "tfidf"), "--overwrite",
                               "--chromosomes", args.chromosomes, "--k_min", str(loaded.tokenizer.k_min),
                               "--k_max", str(loaded.tokenizer.k_max), "--seq_length", str(loaded.window_length)])
            if status:
                return status
            status = cli.main(["attention", "--model", args.model, "--fasta", args.fasta,
                               "--output_dir", str(out / "attention"), "--overwrite", "--chromosomes",
                               args.chromosomes, "--num_sequences", str(args.num_sequences),
                               "--tfidf_csv", str(out / "tfidf" / "tfidf_top.csv")])
            if status:
                return status
            images = Path(args.images_dir)
            images.mkdir(parents=True, exist_ok=True)
            for tool, names in FIGURES.items():
                for name in names:
                    shutil.copyfile(out / tool / name, images / name)
                    print(f"wrote {images / name}")
        return 0

    return run_cli(run)


if __name__ == "__main__":
    sys.exit(main())
