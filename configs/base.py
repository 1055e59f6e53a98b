"""The paper's pretraining setup: BERT-base-like encoder over k-mers 3..8 of a genome.

  python run_pretrain.py --config configs/base.py --workdir runs/base \
      --config.data.data_dir=data_cache/hg38

Every field can be overridden on the command line, e.g.
`--config.train.learning_rate=2e-4 --config.train.fsdp=true`.
Sections: model (exactly model.BertConfig's fields), data (with data.prep =
the data-prep PrepSettings fields), train, distributed.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # ---- model: the fields of dnavec_jax.model.BertConfig, nothing else ----
    config.model = ml_collections.ConfigDict(dict(
        vocab_size=87_365,  # 5 special tokens + 4^3 + ... + 4^8 k-mers (k 3..8)
        hidden_size=512,
        num_layers=12,
        # The paper says 12 heads, but 12 does not divide 512 (42.67 dims per head):
        # we use 8 heads of 64. Config validation rejects hidden_size % num_heads != 0.
        num_heads=8,
        intermediate_size=2048,
        max_position_embeddings=512,  # learned absolute positions
        type_vocab_size=2,
        hidden_dropout_rate=0.1,
        layer_norm_eps=1e-12,
        initializer_range=0.02,
        # Compute dtype (parameters and optimizer state stay float32): bfloat16 on
        # GPU/TPU; use --config.model.dtype=float32 on CPU.
        dtype="bfloat16",
        attention_implementation=config_dict.placeholder(str),  # None: XLA picks; "cudnn": flash attention
        remat=False,
        # Initial tables (docs/training.md, "The demo recipe"): "normal" is BERT's N(0, initializer_range);
        # position_init "sinusoidal": a fixed offset is a rotation; word_init "bases": a k-mer's row starts as
        # the sum of one vector per (offset, base). Both train freely and export as plain tables.
        position_init="normal",
        word_init="normal",
    ))

    # ---- data ----
    config.data = ml_collections.ConfigDict(dict(
        data_dir="data_cache/genome",  # the directory data prep wrote (load_prepared(data_dir))
        source="tfrecord",  # "tfrecord" | "synthetic" (random data of the same shapes, for throughput)
        prepare_if_missing=False,  # True: run data prep with data.prep when data_dir holds no dataset
        shuffle_buffer=10_000,  # examples; the shuffle is seeded per epoch by train.seed
        synthetic_eval_examples=256,  # size of the synthetic "validation split"
        tf_threads=0,  # TensorFlow threads of the input pipeline; 0: a quarter of the cores (1..8)
    ))
    # The data-prep settings (dnavec_jax.data.PrepSettings fields, same names).
    # The training run checks the prepared data against seq_length,
    # max_predictions, k_min and k_max, and the export builds its tokenizer from k_*.
    config.data.prep = ml_collections.ConfigDict(dict(
        fasta=(),  # FASTA(.gz) paths of the genome; empty: the embedded 1 Mbp chr22 demo corpus
        chromosomes="chr1-22",  # "chr1-22" | "all" | "chr1,chr2,..."
        k_min=3,
        k_max=8,
        k_weights=config_dict.placeholder(tuple),  # relative probability of each k; None: uniform
        seq_length=512,  # [CLS] + 510 k-mer tokens + [SEP]
        mask_rate=0.15,
        max_predictions=77,  # ceil(0.15 * 512)
        # "token" (BERT's, the paper's) | "span": runs of mask_span tokens. With one
        # overlapping k-mer per base, a lone masked token can be read off its
        # neighbours; span masking removes most of that leak (see docs/data.md).
        mask_strategy="token",
        mask_span=6,
        dupe_factor=1,
        seed=0,
        soft_masked="upper",  # lower-case bases: "upper" keeps them, "drop" treats them like N
        min_contig_length=64,
        validation_fraction=0.01,
        validation_block_size=100_000,
        chunk_bases=1_000_000,
        shard_bases=16_000_000,
    ))

    # ---- training ----
    config.train = ml_collections.ConfigDict(dict(
        global_batch_size=8,  # examples per optimizer update, over all devices and accumulation steps
        grad_accum_steps=1,  # microbatches per update (lax.scan in the step)
        num_train_steps=80_000,
        learning_rate=4e-4,  # peak
        warmup_steps=10_000,  # 12.5% of the steps, linear from 0 (the paper states no warmup; our choice)
        schedule="linear",  # "linear" | "cosine" | "constant" after the warmup
        end_learning_rate_factor=0.0,  # final lr = factor * peak
        weight_decay=0.01,  # AdamW, not on biases, LayerNorm or the pooler
        adam_b1=0.9,
        adam_b2=0.999,
        adam_eps=1e-6,
        grad_clip_norm=1.0,  # global norm; 0 disables
        # "vocabulary": cross-entropy over the whole vocabulary (the paper's); "length_aware": over the
        # k-mers of the target's length, so the k hidden at a [MASK] is not part of the loss
        # (docs/training.md, "What the objective allows").
        mlm_objective="vocabulary",
        fsdp=False,  # True: parameters and optimizer state sharded over all devices
        seed=0,  # parameters, dropout and data order
        log_every_steps=100,
        eval_every_steps=5_000,  # 0: only at the end; evaluation covers the whole validation split
        eval_batch_size=64,
        checkpoint_every_steps=2_000,
        keep_checkpoints=3,
        async_checkpointing=True,
    ))

    # ---- export: after a completed (not preempted) run, the final checkpoint as a
    # Hugging Face BertForMaskedLM directory (dnavec export-hf does the same by hand) ----
    config.export = ml_collections.ConfigDict(dict(
        hf_dir="hf",  # relative to the workdir (or absolute); "" disables; one-process runs only
    ))

    # ---- multi-host ----
    config.distributed = ml_collections.ConfigDict(dict(
        # "auto": jax.distributed.initialize() when a coordinator is set here or a
        # cluster is detected (Slurm/Open MPI with more than one task, TPU pod);
        # "always" | "never".
        initialize="auto",
        coordinator_address="",  # host:port of process 0
        num_processes=0,  # 0: from the cluster environment
        process_id=-1,  # -1: from the cluster environment
    ))
    return config
