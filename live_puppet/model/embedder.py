"""The Embedder E(x, y): a frame and its sketch -> a 512-d embedding of the person."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from live_puppet.model.blocks import Encoder, global_sum_pool
from live_puppet.model.config import ModelConfig


class Embedder(nn.Module):
    """Residual downsampling blocks with self-attention, then global sum pooling and ReLU."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(6, config.encoder_channels(), config.image_size,
                               config.attention_resolution)

    def forward(self, image: Tensor, sketch: Tensor) -> Tensor:
        """image, sketch: [N, 3, H, W] in [-1, 1] -> e: [N, embed_dim]."""
        return global_sum_pool(self.encoder(torch.cat([image, sketch], dim=1))[-1])

    def embed_shots(self, images: Tensor, sketches: Tensor) -> Tensor:
        """The paper's ê: the mean embedding of K shots. images, sketches: [B, K, 3, H, W] -> [B, D]."""
        b, k = images.shape[:2]
        e = self(images.flatten(0, 1), sketches.flatten(0, 1))
        return e.view(b, k, -1).mean(dim=1)
