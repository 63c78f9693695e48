"""Folding a portrait into the generator: G(y; ψ) with ψ fixed becomes a plain sketch -> image net.

At run time the portrait never changes, so everything that depends only on it is computed once:

1. ê = mean over the K shots of E(x_k, y_k) (`compute_embedding`), ψ = P·ê (`Generator.project`).
2. Every AdaIN layer becomes `FoldedAdaIN`, an instance norm with constant per-channel scale and
   shift (one `InstanceNormalization` node in ONNX, one layer in TensorRT).
3. Spectral-norm parametrizations are removed, leaving the normalised weights as plain tensors.
4. Exact algebraic rewrites cut the arithmetic without changing the function (up to float rounding):
   - conv3x3 then 2x2 average pooling (downsampling blocks) = one stride-2 4x4 convolution;
   - 1x1 skip convolutions commute with pooling and nearest upsampling, so they run at the low
     resolution;
   - nearest 2x upsampling then conv3x3 (upsampling blocks) = one stride-2 4x4 transposed conv.
   Together they remove about a third of the generator's FLOPs (see `generator_flops`).
5. For runtimes without a fast (or any quantized) transposed convolution, `polyphase_upsampling`
   splits each of those transposed convs into its four output phases: four 2x2 convolutions at the
   low resolution (the same FLOPs), normalised together, then interleaved by a pixel shuffle.
   ONNX Runtime's INT8 path needs it: it has no quantized ConvTranspose kernel.

`fold_generator` returns a `PortraitGenerator(sketch) -> image` whose output equals the unfolded
`Generator(sketch, ψ)` to float tolerance (tests/test_folding.py checks it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from live_puppet.model import AdaIN, Embedder, Generator
from live_puppet.model.blocks import AdaINResBlockUp, ResBlockDown


def compute_embedding(embedder: Embedder, images: Tensor, sketches: Tensor) -> Tensor:
    """ê: the mean embedding of K shots. images, sketches: [K, 3, H, W] in [-1, 1] -> [1, D]."""
    embedder = embedder.eval()
    with torch.no_grad():
        return embedder.embed_shots(images[None], sketches[None])


class FoldedAdaIN(nn.Module):
    """AdaIN with its (scale, shift) fixed: instance_norm(x) * scale + shift as one op."""

    def __init__(self, scale: Tensor, shift: Tensor, eps: float):
        super().__init__()
        self.register_buffer("scale", scale.detach().reshape(-1).clone())
        self.register_buffer("shift", shift.detach().reshape(-1).clone())
        self.eps = eps

    def forward(self, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
        """The per-frame scale/shift arguments of AdaIN are ignored: they are folded in."""
        return F.instance_norm(x, weight=self.scale, bias=self.shift, eps=self.eps)


def strip_spectral_norm(module: nn.Module) -> nn.Module:
    """Remove every parametrization in place, keeping the parametrized (normalised) weights."""
    for m in list(module.modules()):
        if parametrize.is_parametrized(m):
            for name in list(m.parametrizations.keys()):
                parametrize.remove_parametrizations(m, name, leave_parametrized=True)
    return module


def _plain_conv(conv: nn.Conv2d) -> tuple[Tensor, Tensor | None]:
    return conv.weight.detach(), None if conv.bias is None else conv.bias.detach()


def conv_then_avgpool(conv: nn.Conv2d) -> nn.Conv2d:
    """A stride-2 conv equal to `avg_pool2d(conv(x), 2)` for a 3x3, padding-1, stride-1 conv."""
    w, b = _plain_conv(conv)
    out_ch, in_ch, k, _ = w.shape
    assert k == 3 and conv.padding == (1, 1) and conv.stride == (1, 1)
    box = torch.ones(1, 1, 2, 2, dtype=w.dtype) / 4.0
    # full 2-D convolution of every 3x3 kernel with the 2x2 box filter -> 4x4 kernels
    merged = F.conv2d(F.pad(w.reshape(-1, 1, k, k), (1, 1, 1, 1)), box).reshape(out_ch, in_ch, 4, 4)
    fused = nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1, bias=b is not None)
    fused.weight.data.copy_(merged)
    if b is not None:
        fused.bias.data.copy_(b)
    return fused


def upsample_then_conv(conv: nn.Conv2d) -> nn.ConvTranspose2d:
    """A stride-2 transposed conv equal to `conv(interpolate(x, 2, 'nearest'))` (3x3, padding 1).

    Output pixel 2i+a reads input rows i-1..i+1; each 3x3 tap lands on one of them, so per output
    phase the kernel collapses to 2x2. Written as a 4x4 transposed conv with stride 2, padding 1.
    """
    w, b = _plain_conv(conv)
    out_ch, in_ch, k, _ = w.shape
    assert k == 3 and conv.padding == (1, 1) and conv.stride == (1, 1)
    # For output phase a (0 or 1) and tap t (0..2), the low-res input row is i + floor((a+t-1)/2).
    # A transposed conv with stride 2, padding 1 computes out[2i+a] = sum_m W[m] x[(2i+a+1-m)/2];
    # tap m of the 4x4 kernel is hit by phase a from input row i + (a + 1 - m) / 2.
    kernel_1d = torch.zeros(2, 3, 4, dtype=w.dtype)  # [phase, tap, transposed-kernel index]
    for a in range(2):
        for t in range(3):
            d = (a + t - 1) // 2  # input row offset read by tap t in phase a
            m = a + 1 - 2 * d  # the transposed kernel index giving that offset in phase a
            kernel_1d[a, t, m] = 1.0
    big = torch.zeros(in_ch, out_ch, 4, 4, dtype=w.dtype)
    wt = w.permute(1, 0, 2, 3)  # in, out, 3, 3
    for a in range(2):
        for c in range(2):
            # rows: phase a, cols: phase c; each (m, n) entry lies in exactly one phase pair
            contrib = torch.einsum("iotu,tm,un->iomn", wt, kernel_1d[a], kernel_1d[c])
            big += contrib
    up = nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=b is not None)
    up.weight.data.copy_(big)
    if b is not None:
        up.bias.data.copy_(b)
    return up


class FoldedResBlockDown(nn.Module):
    """`ResBlockDown` with conv2 + pooling merged and the skip conv run after pooling."""

    def __init__(self, block: ResBlockDown):
        super().__init__()
        self.preactivate = block.preactivate
        self.norm1, self.conv1, self.norm2 = block.norm1, block.conv1, block.norm2
        self.conv2_pool = conv_then_avgpool(block.conv2)
        self.skip = block.skip

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(x)) if self.preactivate else x
        h = self.conv2_pool(F.relu(self.norm2(self.conv1(h))))
        return h + self.skip(F.avg_pool2d(x, 2))


class PolyphaseUpConv(nn.Module):
    """A stride-2, 4x4, padding-1 transposed conv as its four output phases.

    Output pixel (2i+a, 2j+c) reads input rows {i-1, i} (a = 0) or {i, i+1} (a = 1), and likewise
    for columns, through taps TAPS[a] of the transposed kernel: per phase a 2x2 convolution at
    the input's resolution with an asymmetric zero padding. The same multiply-adds as the
    transposed conv, but as plain convolutions (which every runtime quantizes).
    """

    TAPS = ((3, 1), (2, 0))  # transposed-kernel indices read by phase 0 and 1, in input order

    def __init__(self, up: nn.ConvTranspose2d):
        super().__init__()
        assert up.kernel_size == (4, 4) and up.stride == (2, 2) and up.padding == (1, 1)
        w = up.weight.detach()  # in, out, 4, 4
        bias = None if up.bias is None else up.bias.detach()
        self.phases = nn.ModuleList()
        for a in range(2):
            for c in range(2):
                k = w[:, :, list(self.TAPS[a])][:, :, :, list(self.TAPS[c])]
                conv = nn.Conv2d(w.shape[0], w.shape[1], 2, bias=bias is not None)
                conv.weight.data.copy_(k.permute(1, 0, 2, 3))
                if bias is not None:
                    conv.bias.data.copy_(bias)
                self.phases.append(conv)

    def split(self, x: Tensor) -> Tensor:
        """The four output phases, [B, C, 4, H, W], phase index 2a + c."""
        out = []
        for i, conv in enumerate(self.phases):
            a, c = divmod(i, 2)
            out.append(conv(F.pad(x, (1 - c, c, 1 - a, a))))  # left, right, top, bottom
        return torch.stack(out, 2)

    @staticmethod
    def interleave(phases: Tensor) -> Tensor:
        """[B, C, 4, H, W] -> [B, C, 2H, 2W]."""
        b, c, _, h, w = phases.shape
        return F.pixel_shuffle(phases.reshape(b, 4 * c, h, w), 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.interleave(self.split(x))


class FoldedResBlockUp(nn.Module):
    """`AdaINResBlockUp` with upsample + conv1 as one transposed conv and the skip at low res."""

    def __init__(self, block: AdaINResBlockUp):
        super().__init__()
        self.norm1, self.norm2, self.conv2, self.skip = block.norm1, block.norm2, block.conv2, block.skip
        self.up_conv1: nn.Module = upsample_then_conv(block.conv1)

    def forward(self, x: Tensor, params=None) -> Tensor:
        h = F.relu(self.norm1(x))
        if isinstance(self.up_conv1, PolyphaseUpConv):
            # Instance norm and ReLU do not care where a pixel sits: run them on the four phases
            # as one picture per channel, and interleave afterwards (INT8: on the quantized bytes).
            p = self.up_conv1.split(h)
            b, c, _, hh, ww = p.shape
            p = F.relu(self.norm2(p.reshape(b, c, 4 * hh, ww)))
            h = self.up_conv1.interleave(p.reshape(b, c, 4, hh, ww))
        else:
            h = F.relu(self.norm2(self.up_conv1(h)))
        return self.conv2(h) + F.interpolate(self.skip(x), scale_factor=2.0, mode="nearest")


def polyphase_upsampling(folded: "PortraitGenerator") -> "PortraitGenerator":
    """`folded` with every upsampling transposed conv split into its four phases (in place)."""
    for m in folded.modules():
        if isinstance(m, FoldedResBlockUp) and isinstance(m.up_conv1, nn.ConvTranspose2d):
            m.up_conv1 = PolyphaseUpConv(m.up_conv1)
    return folded


def _replace_children(module: nn.Module, convert) -> None:
    """Replace, depth first, every submodule for which `convert` returns a new module."""
    for name, child in module.named_children():
        new = convert(child)
        if new is not None:
            setattr(module, name, new)
        else:
            _replace_children(child, convert)


def _fresh_copy(generator: Generator) -> Generator:
    """An independent copy built from the config and the state dict.

    Not copy.deepcopy: a deep copy shares each parametrized module's generated class with the
    original, and removing the copy's parametrizations would delete the original's `weight`.
    """
    g = type(generator)(generator.config)
    g.load_state_dict(generator.state_dict())
    return g.eval()


class PortraitGenerator(nn.Module):
    """The generator with one portrait folded in: sketch [B,3,R,R] in [-1,1] -> image in [-1,1]."""

    def __init__(self, generator: Generator, psi: Tensor, rewrite: bool = True):
        super().__init__()
        if psi.ndim != 2 or psi.shape[0] != 1:
            raise ValueError(f"psi must be [1, psi_dim], got {tuple(psi.shape)}")
        g = _fresh_copy(generator)
        params = g.adain_params(psi.detach())
        adains = [m for m in g.modules() if isinstance(m, AdaIN)]
        folded = {id(m): FoldedAdaIN(s, b, m.eps) for m, (s, b) in zip(adains, params, strict=True)}
        _replace_children(g, lambda m: folded.get(id(m)))
        strip_spectral_norm(g)
        if rewrite:
            _replace_children(g, lambda m: FoldedResBlockDown(m) if isinstance(m, ResBlockDown)
                              else FoldedResBlockUp(m) if isinstance(m, AdaINResBlockUp) else None)
        del g.projection  # ψ is folded in: P is no longer needed
        for p in g.parameters():
            p.requires_grad_(False)
        self.generator = g
        self.num_adain = len(adains)
        self.image_size = generator.config.image_size

    def forward(self, sketch: Tensor) -> Tensor:
        return self.generator.render(sketch, [(None, None)] * self.num_adain)


def fold_generator(generator: Generator, e_hat: Tensor | None = None, psi: Tensor | None = None,
                   rewrite: bool = True) -> PortraitGenerator:
    """The generator with ψ (given, or P·ê) folded in, spectral norm stripped, rewrites applied."""
    if psi is None:
        if e_hat is None:
            raise ValueError("fold_generator needs e_hat or psi")
        with torch.no_grad():
            psi = generator.eval().project(e_hat.reshape(1, -1).float())
    return PortraitGenerator(generator, psi.reshape(1, -1).float(), rewrite=rewrite).eval()


def generator_flops(module: nn.Module, image_size: int, *args) -> int:
    """FLOPs (2 per multiply-add) of one forward pass on a [1, 3, S, S] input."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x, *args)
    return int(counter.get_total_flops())
