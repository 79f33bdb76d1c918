"""Config of stage `train`: the bundled trainer's own section (train_handoff/config.py)."""

from train_handoff.config import TrainConfig

__all__ = ["TrainConfig"]
