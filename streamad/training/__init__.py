"""Training of windowed VAEs and label-free model selection."""

from streamad.training.trainer import TrainConfig, fit_model, train_bundle

__all__ = ["TrainConfig", "fit_model", "train_bundle"]
