"""Training and evaluating potentials."""

from .metrics import error_metrics, evaluate, predict
from .trainer import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer", "error_metrics", "evaluate", "predict"]
