"""The networks and losses of the talking-head model: shapes, gradient flow, AdaIN folding
contract, spectral-norm removal, and the losses on inputs whose values are known."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from live_puppet.model import AdaIN, Discriminator, Embedder, Generator, ModelConfig
from live_puppet.model import losses

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny() -> ModelConfig:
    """32-px, 8-channel networks: the real architecture at a size that runs in milliseconds."""
    return ModelConfig(image_size=32, base_channels=8, max_channels=16, embed_dim=512,
                       generator_down_blocks=2, generator_res_blocks=1, attention_resolution=16,
                       shots=2)


def images(*shape):
    return torch.rand(*shape) * 2 - 1


def test_presets_have_paper_and_small_sizes():
    paper, small = ModelConfig.paper(), ModelConfig.small()
    assert paper.image_size == 256 and small.image_size == 128
    assert small.base_channels < paper.base_channels
    assert paper.lr_g == 5e-5 and paper.lr_d == 2e-4 and paper.shots == 8
    assert (paper.w_fm, paper.w_mch, paper.w_vgg19, paper.w_vggface) == (10.0, 80.0, 1e-2, 2e-3)
    assert ModelConfig.from_json(small.to_json()) == small
    with pytest.raises(ValueError):
        ModelConfig(image_size=100)


def test_embedder_gives_one_512_vector_per_image_and_mean_over_shots(tiny):
    torch.manual_seed(0)
    emb = Embedder(tiny).eval()  # eval: no power iteration between the two calls
    x, y = images(2, 3, 3, 32, 32), images(2, 3, 3, 32, 32)
    e_hat = emb.embed_shots(x, y)
    assert e_hat.shape == (2, 512)
    single = emb(x[1], y[1])
    assert single.shape == (3, 512)
    assert torch.allclose(e_hat[1], single.mean(0), rtol=1e-4, atol=1e-4)
    assert (single >= 0).all()  # global sum pooling is followed by ReLU


def test_generator_maps_sketch_and_psi_to_image_in_range(tiny):
    torch.manual_seed(0)
    gen = Generator(tiny)
    psi = gen.project(torch.randn(2, 512))
    assert psi.shape == (2, gen.psi_dim)
    out = gen(images(2, 3, 32, 32), psi)
    assert out.shape == (2, 3, 32, 32)
    assert out.abs().max() <= 1.0


def test_adain_params_follow_module_order_and_fold_into_constants(tiny):
    torch.manual_seed(0)
    gen = Generator(tiny).eval()
    adains = [m for m in gen.modules() if isinstance(m, AdaIN)]
    psi = torch.randn(1, gen.psi_dim) * 0.3
    params = gen.adain_params(psi)
    assert len(params) == len(adains)
    for m, (scale, shift) in zip(adains, params):
        assert scale.shape == shift.shape == (1, m.num_features)
    sketch = images(1, 3, 32, 32)
    expected = gen(sketch, psi)

    # Fold: replace every AdaIN by a module holding its constants, as a backend would.
    class Folded(torch.nn.Module):
        def __init__(self, scale, shift):
            super().__init__()
            self.scale, self.shift = scale, shift

        def forward(self, x, _scale, _shift):
            return F.instance_norm(x) * self.scale[:, :, None, None] + self.shift[:, :, None, None]

    constants = {id(m): p for m, p in zip(adains, params)}
    for parent in list(gen.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, AdaIN):
                setattr(parent, name, Folded(*constants[id(child)]))
    folded = gen(sketch, torch.zeros_like(psi))  # psi no longer used: the constants are
    assert torch.allclose(folded, expected, atol=1e-5)


def test_psi_changes_the_output(tiny):
    torch.manual_seed(0)
    gen = Generator(tiny).eval()
    sketch = images(1, 3, 32, 32)
    a = gen(sketch, torch.zeros(1, gen.psi_dim))
    b = gen(sketch, torch.randn(1, gen.psi_dim))
    assert (a - b).abs().mean() > 1e-3


def test_discriminator_scores_and_features_and_projection(tiny):
    torch.manual_seed(0)
    disc = Discriminator(tiny, num_videos=3).eval()
    x, y = images(2, 3, 32, 32), images(2, 3, 32, 32)
    score, feats = disc(x, y, video=torch.tensor([0, 2]))
    assert score.shape == (2,)
    assert len(feats) >= 3 and feats[-1].shape[1] == 512
    # r = v·(W_i + w0) + b: passing W_i explicitly as w gives the same score
    score_w, _ = disc(x, y, w=disc.video_columns(torch.tensor([0, 2])))
    assert torch.allclose(score, score_w)
    with pytest.raises(ValueError):
        disc(x, y)


def test_gradients_flow_through_embedder_generator_and_discriminator(tiny):
    torch.manual_seed(0)
    emb, gen, disc = Embedder(tiny), Generator(tiny), Discriminator(tiny, 2)
    shots, shot_sketches = images(1, 2, 3, 32, 32), images(1, 2, 3, 32, 32)
    sketch, target = images(1, 3, 32, 32), images(1, 3, 32, 32)
    e_hat = emb.embed_shots(shots, shot_sketches)
    fake = gen(sketch, gen.project(e_hat))
    score, _ = disc(fake, sketch, video=torch.tensor([1]))
    (losses.adversarial_generator_loss(score) + losses.reconstruction_l1_loss(fake, target)
     + losses.embedding_match_loss(e_hat, disc.video_columns(torch.tensor([1])))).backward()
    for name, net in (("embedder", emb), ("generator", gen), ("discriminator", disc)):
        grads = [p.grad for p in net.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), f"{name} has parameters without gradient"
        assert sum(g.abs().sum() for g in grads) > 0, f"{name} got zero gradient"
    assert gen.projection.grad.abs().sum() > 0  # P is learned
    assert disc.W.grad[:, 0].abs().sum() == 0 and disc.W.grad[:, 1].abs().sum() > 0


def test_spectral_norm_is_a_removable_parametrization(tiny):
    torch.manual_seed(0)
    gen = Generator(tiny).eval()
    psi = torch.randn(1, gen.psi_dim) * 0.1
    sketch = images(1, 3, 32, 32)
    before = gen(sketch, psi)
    count = 0
    for m in gen.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            count += 1
    assert count > 10
    assert torch.allclose(gen(sketch, psi), before, atol=1e-5)


def test_generator_exports_as_one_graph_without_python_branches(tiny):
    torch.manual_seed(0)
    gen = Generator(tiny).eval()
    args = (images(1, 3, 32, 32), torch.zeros(1, gen.psi_dim))
    exported = torch.export.export(gen, args, strict=False)  # fails on data-dependent control flow
    x, psi = images(1, 3, 32, 32), torch.randn(1, gen.psi_dim) * 0.1
    assert torch.allclose(exported.module()(x, psi), gen(x, psi), atol=1e-5)


def test_hinge_and_adversarial_losses_on_known_scores():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2] -> mean 2.5/3; relu(1 + fake) = [0, 1, 2] -> mean 1
    assert losses.hinge_discriminator_loss(real, fake).item() == pytest.approx(2.5 / 3 + 1.0)
    assert losses.adversarial_generator_loss(fake).item() == pytest.approx(1.0 / 3)


def test_feature_matching_embedding_match_and_l1_on_known_inputs():
    real = [torch.zeros(1, 2, 2, 2), torch.ones(1, 1, 1, 1)]
    fake = [torch.full((1, 2, 2, 2), 0.5), torch.full((1, 1, 1, 1), 3.0)]
    assert losses.feature_matching_loss(real, fake).item() == pytest.approx(0.5 + 2.0)
    assert losses.embedding_match_loss(torch.tensor([[1.0, -1.0]]),
                                       torch.tensor([[0.0, 1.0]])).item() == pytest.approx(1.5)
    assert losses.reconstruction_l1_loss(torch.ones(1, 3, 2, 2),
                                         -torch.ones(1, 3, 2, 2)).item() == pytest.approx(2.0)


def test_content_loss_is_zero_for_identical_images_and_weighted_per_network():
    torch.manual_seed(0)
    vgg19 = losses.VGGFeatures.vgg19()
    x = images(1, 3, 32, 32)
    assert losses.ContentLoss(vgg19, None, 1e-2, 2e-3)(x, x).item() == 0.0
    y = images(1, 3, 32, 32)
    one = losses.ContentLoss(vgg19, None, 1.0, 0.0)(y, x).item()
    assert one > 0
    assert losses.ContentLoss(vgg19, None, 1e-2, 0.0)(y, x).item() == pytest.approx(one * 1e-2,
                                                                                  rel=1e-4)
    assert not losses.ContentLoss(None, None, 1.0, 1.0).available


def test_vgg_load_convs_checks_shapes():
    net = losses.VGGFeatures.vggface()
    shapes = net.conv_shapes()
    assert len(shapes) == 11  # VGG16 up to relu5_1 (index 25) holds 11 of its 13 convolutions
    good = [(torch.full(s, 0.01), torch.zeros(s[0])) for s in shapes]
    net.load_convs(good)
    assert net.features[0].weight[0, 0, 0, 0].item() == pytest.approx(0.01)
    with pytest.raises(ValueError):
        net.load_convs(good[:5])
    bad = [(torch.zeros(1, 1, 3, 3), torch.zeros(1))] + good[1:]
    with pytest.raises(ValueError):
        net.load_convs(bad)
