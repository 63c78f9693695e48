"""Folding ψ into the generator: the folded module computes what the unfolded one does."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from conftest import tiny_model_config
from live_puppet.backends.folding import (FoldedAdaIN, PolyphaseUpConv, PortraitGenerator,
                                          compute_embedding, conv_then_avgpool, fold_generator,
                                          generator_flops, polyphase_upsampling,
                                          upsample_then_conv)
from live_puppet.model import AdaIN, Embedder, Generator, ModelConfig
from live_puppet.model.blocks import SelfAttention

TOL = 1e-4


def tiny_config() -> ModelConfig:
    return tiny_model_config()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = tiny_config()
    g, e = Generator(cfg).eval(), Embedder(cfg).eval()
    with torch.no_grad():  # a trained-looking P, so that ψ moves every AdaIN well away from 1/0
        g.projection.normal_(0, 0.3)
        for m in g.modules():
            if isinstance(m, SelfAttention):
                m.gamma.fill_(0.5)  # attention active, not the initial identity
    return cfg, g, e


def inputs(cfg, k=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(k, 3, cfg.image_size, cfg.image_size, generator=g) * 2 - 1


@pytest.mark.parametrize("rewrite", [False, True])
def test_folded_equals_unfolded(model, rewrite):
    cfg, g, e = model
    images, sketches = inputs(cfg, 3, 1), inputs(cfg, 3, 2)
    e_hat = compute_embedding(e, images, sketches)
    folded = fold_generator(g, e_hat=e_hat, rewrite=rewrite)
    y = inputs(cfg, 2, 3)
    with torch.no_grad():
        ref = g(y, g.project(e_hat).expand(2, -1))
        out = folded(y)
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < TOL
    assert ref.std().item() > 0.05  # a non-trivial output, not a constant both sides agree on


def test_embedding_is_mean_over_shots(model):
    cfg, _, e = model
    images, sketches = inputs(cfg, 4, 4), inputs(cfg, 4, 5)
    with torch.no_grad():
        each = e(images, sketches)
    assert torch.allclose(compute_embedding(e, images, sketches), each.mean(0, keepdim=True),
                          atol=1e-6)


def test_folding_strips_parametrizations_and_adain(model):
    cfg, g, _ = model
    folded = fold_generator(g, psi=torch.randn(1, g.psi_dim))
    assert not any(parametrize.is_parametrized(m) for m in folded.modules())
    assert not any(isinstance(m, AdaIN) for m in folded.modules())
    n_adain = sum(isinstance(m, AdaIN) for m in g.modules())
    assert sum(isinstance(m, FoldedAdaIN) for m in folded.modules()) == n_adain
    assert not any(p.requires_grad for p in folded.parameters())


def test_folding_leaves_the_original_generator_working(model):
    """A deep copy would share the parametrized classes; stripping it must not break `g`."""
    cfg, g, _ = model
    psi = torch.randn(1, g.psi_dim) * 0.1
    y = inputs(cfg, 1, 6)
    with torch.no_grad():
        before = g(y, psi)
        fold_generator(g, psi=psi)
        fold_generator(g, psi=psi)
        after = g(y, psi)
    assert parametrize.is_parametrized(g.out_conv)
    assert torch.equal(before, after)


def test_fused_psi_from_portrait_checkpoint(model):
    cfg, g, _ = model
    psi = torch.randn(1, g.psi_dim) * 0.2
    y = inputs(cfg, 1, 7)
    with torch.no_grad():
        assert (fold_generator(g, psi=psi)(y) - g(y, psi)).abs().max() < TOL
    with pytest.raises(ValueError):
        PortraitGenerator(g, torch.zeros(2, g.psi_dim))


def test_conv_then_avgpool_is_exact():
    torch.manual_seed(2)
    conv = nn.Conv2d(5, 7, 3, padding=1)
    x = torch.randn(2, 5, 12, 10)
    with torch.no_grad():
        ref = torch.nn.functional.avg_pool2d(conv(x), 2)
        assert (conv_then_avgpool(conv)(x) - ref).abs().max() < 1e-5


def test_upsample_then_conv_is_exact():
    torch.manual_seed(3)
    conv = nn.Conv2d(5, 7, 3, padding=1)
    x = torch.randn(2, 5, 6, 9)
    with torch.no_grad():
        ref = conv(torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
        out = upsample_then_conv(conv)(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < 1e-5


def test_polyphase_split_of_a_transposed_conv_is_exact():
    torch.manual_seed(4)
    up = upsample_then_conv(nn.Conv2d(5, 7, 3, padding=1))
    x = torch.randn(2, 5, 6, 9)
    with torch.no_grad():
        out = PolyphaseUpConv(up)(x)
        ref = up(x)
    assert out.shape == ref.shape == (2, 7, 12, 18)
    assert (out - ref).abs().max() < 1e-5


def test_polyphase_generator_equals_the_folded_one_at_the_same_flops(model):
    cfg, g, _ = model
    folded = fold_generator(g, psi=torch.randn(1, g.psi_dim) * 0.3)
    split = polyphase_upsampling(copy.deepcopy(folded))
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in split.modules())
    assert any(isinstance(m, nn.ConvTranspose2d) for m in folded.modules())  # copy, not in place
    y = inputs(cfg, 2, 7)
    with torch.no_grad():
        assert (split(y) - folded(y)).abs().max() < TOL
    assert generator_flops(split, cfg.image_size) == generator_flops(folded, cfg.image_size)


def test_rewrites_cut_flops(model):
    cfg, g, _ = model
    psi = torch.zeros(1, g.psi_dim)
    plain = generator_flops(fold_generator(g, psi=psi, rewrite=False), cfg.image_size)
    rewritten = generator_flops(fold_generator(g, psi=psi), cfg.image_size)
    assert rewritten < 0.85 * plain
