"""Demo: a small BERT on the embedded 1 Mbp of human chr22, a few minutes on a 2-core CPU.

  python run_pretrain.py --config configs/demo.py --workdir runs/demo

Prepares the dataset under data_cache/chr22_demo first if it is missing (k 3..6,
128 tokens, span masking, 4 differently tokenized/masked copies). docs/training.md
states the measured loss and the unigram baseline.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.model.update(
        vocab_size=5 + 4**3 + 4**4 + 4**5 + 4**6,  # 5,445 ids: k 3..6
        hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512, max_position_embeddings=128,
        dtype="float32",  # CPU
    )
    config.data.update(data_dir="data_cache/chr22_demo", prepare_if_missing=True, shuffle_buffer=4096)
    config.data.prep.update(
        fasta=(),  # the embedded corpus
        k_min=3, k_max=6, seq_length=128, max_predictions=20,
        # Span masking: with token masking ~95% of the masked k-mers can be read off
        # their unmasked overlapping neighbours, and the loss would mostly measure copying.
        mask_strategy="span", mask_span=6,
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
