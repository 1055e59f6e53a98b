"""Experiment configs: `python run_pretrain.py --config configs/<name>.py`; each file's get_config() returns one."""
