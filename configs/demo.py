"""Demo: a small BERT on the embedded 1 Mbp of human chr22 that learns the overlap structure, ~5 min on 2 CPU cores.

  python run_pretrain.py --config configs/demo.py --workdir runs/demo
  python scripts/structure_report.py --model runs/demo     # copy probe, neighbour and attention figures

Prepares the dataset under data_cache/chr22_demo first if it is missing
(k 3..6, 128 tokens, token masking, 4 differently tokenized/masked copies).
docs/training.md ("The demo recipe") says how each setting was chosen and what it measured.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.model.update(
        vocab_size=5 + 4**3 + 4**4 + 4**5 + 4**6,  # 5,445 ids: k 3..6
        hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512, max_position_embeddings=128,
        dtype="float32",  # CPU
        # With neither start, or only one, the model did not learn to copy from neighbours in our runs:
        # sinusoidal positions make "the k-mer d positions away" one learnable rotation, and k-mer rows
        # that start as sums of base vectors let attention move bases between neighbours from step 0.
        position_init="sinusoidal", word_init="bases",
        hidden_dropout_rate=0.0,  # learns faster; a small model far from overfitting 1 Mbp in 1,000 steps
    )
    config.data.update(data_dir="data_cache/chr22_demo", prepare_if_missing=True, shuffle_buffer=4096)
    config.data.prep.update(
        fasta=(),  # the embedded corpus
        k_min=3, k_max=6, seq_length=128, max_predictions=20,
        # Token masking: most masked k-mers can be read off their overlapping neighbours, which is
        # the structure the demo is to show (span masking hides it; docs/data.md, docs/training.md).
        mask_strategy="token", mask_span=6,
        dupe_factor=4,
        validation_fraction=0.05, validation_block_size=20_000,  # 3 held-out blocks, 60 kbp
        chunk_bases=100_000, shard_bases=200_000,  # several shards (one per process at least)
    )
    config.train.update(
        global_batch_size=32, num_train_steps=1_000, learning_rate=1e-3, warmup_steps=100, schedule="linear",
        log_every_steps=50, eval_every_steps=250, eval_batch_size=64, checkpoint_every_steps=250,
        keep_checkpoints=2,
    )
    return config
