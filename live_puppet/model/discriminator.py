"""The projection Discriminator D(x, y, i): how real frame x looks for sketch y and video i."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from live_puppet.model.blocks import Encoder, ResBlock, global_sum_pool
from live_puppet.model.config import ModelConfig


class Discriminator(nn.Module):
    """The embedder's structure plus a residual block; realism r = v·(w_i + w_0) + b.

    W holds one column per training video (`num_videos` of them). For fine-tuning on a new person,
    `w` is passed directly (the paper initialises it from ê).
    """

    def __init__(self, config: ModelConfig, num_videos: int):
        super().__init__()
        if num_videos < 1:
            raise ValueError("the discriminator needs at least one video")
        self.config = config
        self.num_videos = num_videos
        self.encoder = Encoder(6, config.encoder_channels(), config.image_size,
                               config.attention_resolution)
        self.final = ResBlock(config.embed_dim)
        self.W = nn.Parameter(torch.randn(config.embed_dim, num_videos) * 0.02)
        self.w0 = nn.Parameter(torch.zeros(config.embed_dim))
        self.b = nn.Parameter(torch.zeros(()))

    def video_columns(self, video: Tensor) -> Tensor:
        """W_i for each video index: [B] (long) -> [B, embed_dim]."""
        return self.W.t()[video]

    def forward(self, image: Tensor, sketch: Tensor, video: Tensor | None = None,
                w: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """Realism score [B] and the activations of every block (for feature matching).

        Give either `video` ([B] indices into W) or `w` ([B, embed_dim], e.g. fine-tuning's w').
        """
        if (video is None) == (w is None):
            raise ValueError("pass exactly one of video or w")
        if w is None:
            w = self.video_columns(video)
        feats = self.encoder(torch.cat([image, sketch], dim=1))
        feats.append(self.final(feats[-1]))
        v = global_sum_pool(feats[-1])
        score = (v * (w + self.w0)).sum(dim=1) + self.b
        return score, feats
