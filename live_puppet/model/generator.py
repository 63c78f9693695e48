"""The Generator G(y; ψ): a landmark sketch -> an image of the person whose parameters are ψ.

Structure (the paper's): downsampling residual blocks with instance normalisation, residual blocks
and upsampling residual blocks normalised by AdaIN, self-attention in both halves, a final AdaIN,
ReLU, convolution and tanh. The person-specific parameters are ψ = P·ê (P a learned matrix); they
give the (scale, shift) of every AdaIN layer. ψ holds offsets from scale 1: scale = 1 + ψ_scale,
which keeps the initial network well conditioned when ψ is near zero.

`forward(sketch, psi)` = `render(sketch, adain_params(psi))`; a deployment that folds ψ in once can
call `render` with fixed parameters, or replace each AdaIN by a constant affine instance norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from live_puppet.model.blocks import (AdaIN, AdaINResBlock, AdaINResBlockUp, ResBlockDown,
                                      SelfAttention, sn_conv)
from live_puppet.model.config import ModelConfig


class Generator(nn.Module):
    """Sketch [B,3,H,W] in [-1,1] and ψ [B, psi_dim] -> image [B,3,H,W] in [-1,1]."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        size = config.image_size
        down: list[nn.Module] = []
        prev = 3
        for i, ch in enumerate(config.generator_down_channels()):
            down.append(ResBlockDown(prev, ch, norm=True, preactivate=i > 0))
            size //= 2
            prev = ch
            if size == config.attention_resolution:
                down.append(SelfAttention(ch))
        self.down = nn.ModuleList(down)

        self.res = nn.ModuleList(AdaINResBlock(prev) for _ in range(config.generator_res_blocks))

        up: list[nn.Module] = []
        for ch in config.generator_up_channels():
            up.append(AdaINResBlockUp(prev, ch))
            size *= 2
            prev = ch
            if size == config.attention_resolution:
                up.append(SelfAttention(ch))
        self.up = nn.ModuleList(up)

        self.out_norm = AdaIN(prev)
        self.out_conv = sn_conv(prev, 3)

        self.adain_channels = [m.num_features for m in self.modules() if isinstance(m, AdaIN)]
        self.psi_dim = 2 * sum(self.adain_channels)
        # P: the projection from the embedding to ψ (a plain learned matrix, no bias).
        self.projection = nn.Parameter(torch.randn(self.psi_dim, config.embed_dim) * 0.01
                                       / config.embed_dim ** 0.5)

    def project(self, e_hat: Tensor) -> Tensor:
        """ψ = P·ê. e_hat: [B, embed_dim] -> psi: [B, psi_dim]."""
        return e_hat @ self.projection.t()

    def adain_params(self, psi: Tensor) -> list[tuple[Tensor, Tensor]]:
        """(scale, shift), each [B, C], for every AdaIN module in `self.modules()` order."""
        params = []
        offset = 0
        for c in self.adain_channels:
            scale = 1.0 + psi[:, offset:offset + c]
            shift = psi[:, offset + c:offset + 2 * c]
            params.append((scale, shift))
            offset += 2 * c
        return params

    def forward(self, sketch: Tensor, psi: Tensor) -> Tensor:
        return self.render(sketch, self.adain_params(psi))

    def render(self, sketch: Tensor, params: list[tuple[Tensor, Tensor]]) -> Tensor:
        """The image for `sketch`, given every AdaIN's (scale, shift) in module order."""
        x = sketch
        for layer in self.down:
            x = layer(x)
        i = 0
        for block in self.res:
            x = block(x, params[i:i + 2])
            i += 2
        for layer in self.up:
            if isinstance(layer, AdaINResBlockUp):
                x = layer(x, params[i:i + 2])
                i += 2
            else:
                x = layer(x)
        scale, shift = params[i]
        x = F.relu(self.out_norm(x, scale, shift))
        return torch.tanh(self.out_conv(x))
