import torch

from td3_drive.rl.learner import LearnerConfig
from td3_drive.rl.models import Encoder, build_actor, feature_stats, strided_conv


def extreme_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "black": torch.zeros(4, 4, 84, 84, dtype=torch.uint8),
        "white": torch.full((4, 4, 84, 84), 255, dtype=torch.uint8),
        "noise": torch.randint(0, 256, (4, 4, 84, 84), dtype=torch.uint8, generator=g),
    }


def scale_weights(encoder: Encoder, factor: float) -> None:
    with torch.no_grad():
        for layer in (encoder.conv1, encoder.conv2, encoder.conv3, encoder.fc):
            layer.weight.mul_(factor)
            layer.bias.add_(1.0).mul_(factor)


def test_shapes():
    encoder = Encoder()
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    assert encoder(obs).shape == (3, 512)
    actor = build_actor(LearnerConfig().actor_architecture())
    action = actor(obs, torch.randn(3, 53))
    assert action.shape == (3, 2) and action.abs().max() <= 1


def test_layer_norm_bounds_features_even_with_exploded_weights():
    """The analysis' claim: with LN the per-sample L2 stays < 100 whatever the weights; without, it explodes."""
    torch.manual_seed(0)
    with_ln, without_ln = Encoder(layer_norm=True), Encoder(layer_norm=False)
    without_ln.load_state_dict(with_ln.state_dict(), strict=False)
    for encoder in (with_ln, without_ln):
        scale_weights(encoder, 1000.0)
    with torch.no_grad():
        for name, obs in extreme_inputs().items():
            bounded = with_ln(obs).norm(dim=1)
            assert bounded.max() < 100, (name, bounded.max())
            assert torch.isfinite(bounded).all()
            if name != "black":  # an all-zero image gives zero pre-activations without LN
                assert without_ln(obs).norm(dim=1).max() > 100, name
    # LN features are ~unit scale per unit: L2 is near sqrt(512) * O(1)
    assert 5 < Encoder()(extreme_inputs()["noise"]).norm(dim=1).mean() < 60


def test_space_to_depth_conv_matches_plain_conv():
    torch.manual_seed(0)
    encoder = Encoder()
    x = torch.rand(2, 4, 84, 84)
    assert torch.allclose(strided_conv(x, encoder.conv1), encoder.conv1(x), atol=1e-5)
    y = torch.rand(2, 32, 20, 20)
    assert torch.allclose(strided_conv(y, encoder.conv2), encoder.conv2(y), atol=1e-5)
    # gradients agree too (the point of the rewrite is a faster backward)
    w = encoder.conv1.weight
    g1 = torch.autograd.grad(strided_conv(x, encoder.conv1).square().sum(), w)[0]
    g2 = torch.autograd.grad(encoder.conv1(x).square().sum(), w)[0]
    assert torch.allclose(g1, g2, rtol=1e-4, atol=1e-3)


def test_grad_and_no_grad_paths_agree():
    encoder = Encoder()
    obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        a = encoder(obs)
    assert torch.allclose(a, encoder(obs), atol=1e-5)


def test_feature_stats():
    f = torch.tensor([[3.0, 4.0, -1.0], [0.0, 0.0, -2.0]])
    stats = feature_stats(f)
    assert abs(stats["l2_norm"] - (26 ** 0.5 + 2.0) / 2) < 1e-6
    assert abs(stats["l2_norm_max"] - 26 ** 0.5) < 1e-6
    assert stats["min"] == -2.0 and stats["max"] == 4.0
    assert abs(stats["dead_fraction"] - 1 / 3) < 1e-6  # the third unit is never positive


def test_float_input_is_not_scaled_in_place():
    """Encoder accepts float frames in [0, 255]: the caller's tensor must come back unchanged, same features."""
    encoder = Encoder()
    obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
    as_float = obs.float()
    with torch.no_grad():
        assert torch.allclose(encoder(as_float), encoder(obs), atol=1e-5)
        assert torch.allclose(encoder(as_float), encoder(obs), atol=1e-5)  # twice: not rescaled again
    assert torch.equal(as_float, obs.float())
