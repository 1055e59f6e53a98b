"""A tiny model on synthetic data: smoke runs and the test suite (seconds on a CPU).

  python run_pretrain.py --config configs/tiny.py --workdir /tmp/tiny
"""

from configs import base


def get_config():
    config = base.get_config()
    config.model.update(vocab_size=5 + 4**3 + 4**4, hidden_size=32, num_layers=2, num_heads=4,
                        intermediate_size=64, max_position_embeddings=64, dtype="float32")
    config.data.source = "synthetic"
    config.data.synthetic_eval_examples = 20
    config.data.shuffle_buffer = 64
    config.data.prep.update(k_min=3, k_max=4, seq_length=64, max_predictions=10, mask_span=3)
    config.train.update(global_batch_size=8, num_train_steps=6, warmup_steps=2, learning_rate=1e-3,
                        log_every_steps=1, eval_every_steps=3, eval_batch_size=8, checkpoint_every_steps=2)
    return config
