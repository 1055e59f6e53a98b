"""The paper's pretraining setup: a BERT (12 x 512, 8 heads of 64) over k-mers 3..8 of a genome, batch 8.

  python run_pretrain.py --config configs/base.py --workdir runs/base --config.data.data_dir=data_cache/hg38
  python run_pretrain.py --config configs/base.py:words+positions --workdir runs/base_fast ...

Every default is written once, with its help, in the settings dataclasses:
model.BertConfig (model), training.settings (data, train, export, distributed) and
data.PrepSettings (data.prep); docs/training.md lists them. Override any field on
the command line, e.g. `--config.train.learning_rate=2e-4 --config.train.fsdp=true`.

Variants after the colon, joined by '+', switch on the demo's choices (CHOICES); without one the
paper's recipe runs unchanged. docs/training.md ("The base recipe on a CPU") measures each.
"""

import ml_collections

from dnavec_jax.training.settings import config_sections

# The demo's choices, offered for base: init-only for words and positions (plain tables, trained freely and
# exported as BERT's), dropout off for no_dropout.
CHOICES = {
    "words": {"word_init": "bases"},
    "positions": {"position_init": "sinusoidal"},
    "no_dropout": {"hidden_dropout_rate": 0.0},
}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    # The only departure from the dataclass defaults: bfloat16 compute (parameters and optimizer state stay
    # float32); pass --config.model.dtype=float32 on a CPU.
    config = ml_collections.ConfigDict(config_sections(model={"dtype": "bfloat16"}))
    for choice in filter(None, variant.split("+")):
        if choice not in CHOICES:
            raise ValueError(f"unknown config variant {choice!r}; known: {', '.join(CHOICES)}")
        config.model.update(CHOICES[choice])
    return config
