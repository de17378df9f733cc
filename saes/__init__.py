"""Sparse autoencoders: architectures, training, evaluation, feature analysis and the SAELens file format."""

from saes.architectures import SAE, SAEConfig, make_sae, sae_from_tensors
from saes.train import TrainConfig, train_sae, train_saes

__all__ = ["SAE", "SAEConfig", "TrainConfig", "make_sae", "sae_from_tensors", "train_sae", "train_saes"]
