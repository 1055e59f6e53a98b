"""The paper's pretraining setup: a BERT (12 x 512, 8 heads of 64) over k-mers 3..8 of a genome, batch 8.

  python run_pretrain.py --config configs/base.py --workdir runs/base --config.data.data_dir=data_cache/hg38

Every default is written once, with its help, in the settings dataclasses:
model.BertConfig (model), training.settings (data, train, export, distributed) and
data.PrepSettings (data.prep); docs/training.md lists them. Override any field on
the command line, e.g. `--config.train.learning_rate=2e-4 --config.train.fsdp=true`.
"""

import ml_collections

from dnavec_jax.training.settings import config_sections


def get_config() -> ml_collections.ConfigDict:
    # The only departure from the dataclass defaults: bfloat16 compute (parameters and optimizer state stay
    # float32); pass --config.model.dtype=float32 on a CPU.
    return ml_collections.ConfigDict(config_sections(model={"dtype": "bfloat16"}))
