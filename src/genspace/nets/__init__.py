"""Network architectures only: ``net(x, t, class_labels=None)`` for continuous data, the token
Transformer ``net(tokens, t=None, attn_mask=...)`` for text; no process logic inside."""

from genspace.nets.dit import DiT
from genspace.nets.embeddings import LabelEmbedding, NoiseEmbedding, drop_labels, timestep_embedding
from genspace.nets.mlp import FourierFeatures, SinusoidalEmbedding, TimeMLP
from genspace.nets.transformer import KVCache, Transformer, TransformerConfig
from genspace.nets.unet import UNet
from genspace.nets.utils import param_count, small_dit_for, small_unet_for

__all__ = [
    "TimeMLP",
    "UNet",
    "DiT",
    "Transformer",
    "TransformerConfig",
    "KVCache",
    "FourierFeatures",
    "SinusoidalEmbedding",
    "NoiseEmbedding",
    "LabelEmbedding",
    "drop_labels",
    "timestep_embedding",
    "param_count",
    "small_unet_for",
    "small_dit_for",
]
