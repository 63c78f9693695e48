"""Building blocks shared by the Embedder, Generator and Discriminator.

Every convolution is spectrally normalised with the parametrization API
(`torch.nn.utils.parametrizations.spectral_norm`), so a deployment can bake the normalised weight
in with `torch.nn.utils.parametrize.remove_parametrizations(module, "weight")`.

AdaIN takes its scale and shift as inputs; the Generator computes them from ψ. All AdaIN layers of
a block are registered in the order the block uses them, so the order of
`[m for m in generator.modules() if isinstance(m, AdaIN)]` is the order of use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm


def sn_conv(in_ch: int, out_ch: int, kernel: int = 3) -> nn.Module:
    """A spectrally normalised convolution that keeps the spatial size."""
    return spectral_norm(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2))


class AdaIN(nn.Module):
    """Adaptive instance normalisation: instance_norm(x) * scale + shift, scale/shift [B, C]."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps

    def forward(self, x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        normed = F.instance_norm(x, eps=self.eps)
        return normed * scale[:, :, None, None] + shift[:, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.num_features}"


class SelfAttention(nn.Module):
    """SAGAN self-attention; its output starts as the identity (gamma = 0)."""

    def __init__(self, channels: int):
        super().__init__()
        inner = max(channels // 8, 1)
        self.query = spectral_norm(nn.Conv2d(channels, inner, 1))
        self.key = spectral_norm(nn.Conv2d(channels, inner, 1))
        self.value = spectral_norm(nn.Conv2d(channels, channels, 1))
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # B, HW, C'
        k = self.key(x).flatten(2)  # B, C', HW
        attn = torch.softmax(torch.bmm(q, k), dim=-1)  # B, HW, HW
        v = self.value(x).flatten(2)  # B, C, HW
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.gamma * out


class ResBlockDown(nn.Module):
    """Residual block that halves the resolution (BigGAN style).

    `norm=True` adds instance normalisation (the generator's encoder); `preactivate=False` is for
    the first block, whose input is an image.
    """

    def __init__(self, in_ch: int, out_ch: int, norm: bool = False, preactivate: bool = True):
        super().__init__()
        self.preactivate = preactivate
        self.norm1 = nn.InstanceNorm2d(in_ch, affine=True) if norm and preactivate else nn.Identity()
        self.conv1 = sn_conv(in_ch, out_ch)
        self.norm2 = nn.InstanceNorm2d(out_ch, affine=True) if norm else nn.Identity()
        self.conv2 = sn_conv(out_ch, out_ch)
        self.skip = sn_conv(in_ch, out_ch, kernel=1)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        if self.preactivate:
            h = F.relu(self.norm1(h))
        h = self.conv1(h)
        h = self.conv2(F.relu(self.norm2(h)))
        return F.avg_pool2d(h, 2) + F.avg_pool2d(self.skip(x), 2)


class ResBlock(nn.Module):
    """Residual block at constant resolution and width, without normalisation (discriminator)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = sn_conv(channels, channels)
        self.conv2 = sn_conv(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class AdaINResBlock(nn.Module):
    """Residual block at constant resolution whose two normalisations are AdaIN."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = AdaIN(channels)
        self.conv1 = sn_conv(channels, channels)
        self.norm2 = AdaIN(channels)
        self.conv2 = sn_conv(channels, channels)

    def forward(self, x: Tensor, params: list[tuple[Tensor, Tensor]]) -> Tensor:
        """`params`: the (scale, shift) of norm1 and norm2, in that order."""
        (s1, b1), (s2, b2) = params
        h = self.conv1(F.relu(self.norm1(x, s1, b1)))
        h = self.conv2(F.relu(self.norm2(h, s2, b2)))
        return x + h


class AdaINResBlockUp(nn.Module):
    """Residual block that doubles the resolution (nearest upsampling), normalised by AdaIN."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = AdaIN(in_ch)
        self.conv1 = sn_conv(in_ch, out_ch)
        self.norm2 = AdaIN(out_ch)
        self.conv2 = sn_conv(out_ch, out_ch)
        self.skip = sn_conv(in_ch, out_ch, kernel=1)

    def forward(self, x: Tensor, params: list[tuple[Tensor, Tensor]]) -> Tensor:
        """`params`: the (scale, shift) of norm1 and norm2, in that order."""
        (s1, b1), (s2, b2) = params
        h = F.interpolate(F.relu(self.norm1(x, s1, b1)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), s2, b2)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """The trunk shared by the Embedder and the Discriminator (separate weights).

    Downsampling residual blocks from the image size to 4x4 with self-attention at the configured
    resolution; returns every block's activation (used for feature matching).
    """

    def __init__(self, in_ch: int, channels: list[int], image_size: int, attention_resolution: int):
        super().__init__()
        layers: list[nn.Module] = []
        size, prev = image_size, in_ch
        for i, ch in enumerate(channels):
            layers.append(ResBlockDown(prev, ch, norm=False, preactivate=i > 0))
            size //= 2
            prev = ch
            if size == attention_resolution:
                layers.append(SelfAttention(ch))
        self.layers = nn.ModuleList(layers)
        self.out_channels = prev

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


def global_sum_pool(x: Tensor) -> Tensor:
    """Sum over the spatial dimensions, then ReLU (the paper's pooling for E and D)."""
    return F.relu(x.sum(dim=(2, 3)))
