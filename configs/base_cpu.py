"""The base recipe at the largest scale 2 CPU cores train in 45 minutes, on the embedded 1 Mbp of chr22.

  python run_pretrain.py --config configs/base_cpu.py --workdir runs/base_cpu
  python run_pretrain.py --config configs/base_cpu.py:words+positions+no_dropout --workdir runs/base_cpu_demo
  python scripts/structure_report.py --model runs/base_cpu

configs/base.py's recipe unchanged: k 3..8, 512 tokens, 77 predictions, token masking, BERT's default
inits (normal word and position tables), dropout 0.1, lr 4e-4 with linear warmup over 12.5% of the steps
then linear decay to 0, batch 8. Only width, depth and steps shrink (and the compute dtype is float32,
for the CPU). The corpus is the embedded chr22, as in base's data-prep defaults (one 100 kb block held
out); dupe_factor 4 so that the steps do not revisit the same masks. Variants after the colon, joined
by '+', switch on the demo's choices as configs/base.py offers them (base.CHOICES; docs/training.md, "The
base recipe on a CPU"): words (word_init=bases), positions (position_init=sinusoidal), no_dropout
(hidden_dropout_rate=0).
"""

from configs import base


def get_config(variant: str = ""):
    config = base.get_config(variant)
    config.model.update(hidden_size=128, num_layers=2, num_heads=2, intermediate_size=512,  # head size 64: base's
                        dtype="float32")
    config.data.update(data_dir="data_cache/chr22_base_cpu", prepare_if_missing=True)
    config.data.prep.update(dupe_factor=4, chunk_bases=200_000, shard_bases=400_000)  # several shards
    steps = 600  # 3.3 s a step on the shared 2-core machine, plus four evaluations of ~85 s (docs/training.md)
    config.train.update(num_train_steps=steps, warmup_steps=steps // 8, log_every_steps=25, eval_every_steps=150,
                        eval_batch_size=32, checkpoint_every_steps=150, keep_checkpoints=4)  # one per evaluation
    return config
