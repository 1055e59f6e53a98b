"""The shuffled-genome control of the demo: configs/demo.py on a dinucleotide-preserving shuffle of the same chr22.

  python scripts/shuffle_genome.py --output data_cache/chr22_shuffled.fa.gz
  python run_pretrain.py --config configs/demo_shuffled.py --workdir runs/demo_shuffled

Same records, lengths and held-out blocks, same composition and dinucleotides, no genome beyond them: a model
that learns to copy from overlapping k-mers here has learned the tokenization, not human DNA (docs/classify.md).
"""

from configs import demo

SHUFFLED_FASTA = "data_cache/chr22_shuffled.fa.gz"


def get_config():
    config = demo.get_config()
    config.data.data_dir = "data_cache/chr22_shuffled_demo"
    config.data.prep.fasta = (SHUFFLED_FASTA,)
    return config
