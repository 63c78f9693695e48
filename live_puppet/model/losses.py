"""The paper's losses: content (VGG19 and VGGFace), hinge adversarial, feature matching and
embedding match; plus the L1 reconstruction term this project adds when no VGG weights are given.

Images are [B, 3, H, W] RGB in [-1, 1]. Pretrained VGG weights are never downloaded: the content
networks are built here and filled from tensors the caller read from a file the user named
(see live_puppet.training.checkpoint.load_vgg_weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# VGG layer plans ('M' = 2x2 max-pool), as in Simonyan & Zisserman; VGGFace is a VGG16.
VGG19_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M")
VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# The paper's layers, as indices into the usual `features` Sequential: relu1_1 .. relu5_1.
VGG19_LAYERS = (1, 6, 11, 20, 29)
VGGFACE_LAYERS = (1, 6, 11, 18, 25)
# Input normalisations the two networks were trained with (RGB).
IMAGENET_MEAN, IMAGENET_STD, IMAGENET_RANGE = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1.0
VGGFACE_MEAN, VGGFACE_STD, VGGFACE_RANGE = (129.186, 104.762, 93.594), (1.0, 1.0, 1.0), 255.0


class VGGFeatures(nn.Module):
    """A frozen VGG trunk returning the activations at `layers` (indices into its Sequential)."""

    def __init__(self, plan: tuple, layers: tuple[int, ...], mean: tuple, std: tuple,
                 value_range: float):
        super().__init__()
        modules: list[nn.Module] = []
        prev = 3
        for item in plan:
            if item == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(prev, item, 3, padding=1), nn.ReLU(inplace=False)]
                prev = item
        self.features = nn.Sequential(*modules[:max(layers) + 1])
        self.layers = tuple(layers)
        self.value_range = value_range
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def vgg19(cls) -> "VGGFeatures":
        return cls(VGG19_PLAN, VGG19_LAYERS, IMAGENET_MEAN, IMAGENET_STD, IMAGENET_RANGE)

    @classmethod
    def vggface(cls) -> "VGGFeatures":
        return cls(VGG16_PLAN, VGGFACE_LAYERS, VGGFACE_MEAN, VGGFACE_STD, VGGFACE_RANGE)

    def conv_shapes(self) -> list[torch.Size]:
        return [m.weight.shape for m in self.features if isinstance(m, nn.Conv2d)]

    def load_convs(self, weights: list[tuple[Tensor, Tensor]]) -> None:
        """Fill the convolutions, in order, from (weight, bias) pairs (extra pairs are ignored)."""
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        if len(weights) < len(convs):
            raise ValueError(f"expected {len(convs)} convolutions, found {len(weights)}")
        for conv, (w, b) in zip(convs, weights):
            if w.shape != conv.weight.shape or b.shape != conv.bias.shape:
                raise ValueError(f"convolution shape {tuple(w.shape)} does not match the "
                                 f"expected {tuple(conv.weight.shape)}")
            with torch.no_grad():
                conv.weight.copy_(w)
                conv.bias.copy_(b)

    def train(self, mode: bool = True) -> "VGGFeatures":
        return super().train(False)  # always frozen

    def forward(self, image: Tensor) -> list[Tensor]:
        x = ((image + 1) * 0.5 * self.value_range - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.layers:
                out.append(x)
        return out


class ContentLoss(nn.Module):
    """w_vgg19 · Σ_l |VGG19_l(x̂) - VGG19_l(x)|₁ + w_vggface · Σ_l |VGGFace_l(x̂) - VGGFace_l(x)|₁.

    Either network may be absent; `available` says whether any is present.
    """

    def __init__(self, vgg19: VGGFeatures | None, vggface: VGGFeatures | None,
                 w_vgg19: float, w_vggface: float):
        super().__init__()
        self.vgg19 = vgg19
        self.vggface = vggface
        self.w_vgg19 = w_vgg19
        self.w_vggface = w_vggface

    @property
    def available(self) -> bool:
        return self.vgg19 is not None or self.vggface is not None

    def forward(self, fake: Tensor, real: Tensor) -> Tensor:
        total = fake.new_zeros(())
        for net, weight in ((self.vgg19, self.w_vgg19), (self.vggface, self.w_vggface)):
            if net is None:
                continue
            with torch.no_grad():
                targets = net(real)
            for f, t in zip(net(fake), targets):
                total = total + weight * F.l1_loss(f, t)
        return total


def hinge_discriminator_loss(real_score: Tensor, fake_score: Tensor) -> Tensor:
    """The discriminator's hinge loss: max(0, 1 - D(x)) + max(0, 1 + D(x̂)), batch means."""
    return F.relu(1.0 - real_score).mean() + F.relu(1.0 + fake_score).mean()


def adversarial_generator_loss(fake_score: Tensor) -> Tensor:
    """The generator's realism term: -D(x̂)."""
    return -fake_score.mean()


def feature_matching_loss(real_feats: list[Tensor], fake_feats: list[Tensor]) -> Tensor:
    """Σ over discriminator blocks of the mean L1 distance of activations (real ones detached)."""
    if len(real_feats) != len(fake_feats):
        raise ValueError("feature lists differ in length")
    total = fake_feats[0].new_zeros(())
    for r, f in zip(real_feats, fake_feats):
        total = total + F.l1_loss(f, r.detach())
    return total


def embedding_match_loss(e_hat: Tensor, w: Tensor) -> Tensor:
    """The paper's L_MCH = |ê_i - W_i|₁, as a mean over dimensions and batch."""
    return F.l1_loss(e_hat, w)


def reconstruction_l1_loss(fake: Tensor, real: Tensor) -> Tensor:
    """Mean absolute pixel error (this project's addition when no content network is given)."""
    return F.l1_loss(fake, real)
