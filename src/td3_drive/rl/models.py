"""Networks: the LayerNorm CNN encoder, the actor and the twin critic.

Encoder (the user's analysis, ../shared/reference/cnn-layernorm-analysis.md):
uint8 (B, 4, 84, 84) scaled to [0, 1] inside, then
Conv(32, 8, s4) -> LN([32,20,20]) -> LReLU(0.01) -> Conv(64, 4, s2) -> LN([64,9,9]) -> LReLU
-> Conv(64, 3, s1) -> LN([64,7,7]) -> LReLU -> Linear(3136, 512) -> LN(512) -> LReLU.
LayerNorm re-centres and re-scales every layer, so feature norms stay bounded
whatever the weights do; ``layer_norm=False`` is the failing seed architecture,
kept for the ablation.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FEATURE_DIM = 512
LEAKY_SLOPE = 0.01


@dataclass(frozen=True)
class ActorArchitecture:
    """What a policy must match to load an actor's weights; every weight blob carries it as JSON.
    ``LearnerConfig.actor_architecture()`` makes one (its fields hold the defaults)."""

    frame_stack: int
    state_dim: int
    action_dim: int
    layer_norm: bool
    hidden: tuple[int, ...]
    feature_dim: int
    trunk_dim: int

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "hidden": list(self.hidden)}, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ActorArchitecture":
        """Parsed metadata -> an architecture; ValueError for unknown keys or values of the wrong type.
        Weights written before the trunk existed name no ``trunk_dim``: they have none (0)."""
        if not isinstance(values, dict):
            raise ValueError(f"architecture must be an object, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        if set(values) - known:
            raise ValueError(f"unknown architecture keys {sorted(set(values) - known)}")
        missing = known - set(values) - {"trunk_dim"}
        if missing:
            raise ValueError(f"architecture lacks {sorted(missing)}")
        ints = ("frame_stack", "state_dim", "action_dim", "feature_dim", "trunk_dim")
        hidden = values["hidden"]
        if (not all(type(values.get(k, 0)) is int for k in ints) or type(values["layer_norm"]) is not bool
                or not isinstance(hidden, (list, tuple)) or not all(type(h) is int for h in hidden)):
            raise ValueError(f"architecture values of the wrong type: {values}")
        return cls(**{"trunk_dim": 0, **values, "hidden": tuple(hidden)})


def _space_to_depth(x: torch.Tensor, r: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // r, r, w // r, r).permute(0, 1, 3, 5, 2, 4).reshape(n, c * r * r, h // r, w // r)


def strided_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv(x)`` computed as a stride-1 convolution on space-to-depth input.

    A k x k convolution with stride r (k and the input size divisible by r) equals
    a (k/r) x (k/r) stride-1 convolution over r*r-times more channels.  Same
    parameters, same result up to float rounding, but oneDNN's backward pass for
    the stride-4 8x8 first layer is ~6x slower than for the equivalent 2x2 one on
    CPU in fp32, and that layer dominated the whole TD3 update.  (Its forward pass
    is slower, so it is used only when gradients are needed, and not in bf16,
    where oneDNN's stride-4 backward is fast and the space-to-depth copy is not.)
    """
    r = conv.stride[0]
    k = conv.kernel_size[0]
    if r == 1 or k % r or x.shape[-1] % r or x.shape[-2] % r:
        return conv(x)
    o, c = conv.weight.shape[:2]
    weight = conv.weight.reshape(o, c, k // r, r, k // r, r).permute(0, 1, 3, 5, 2, 4).reshape(o, c * r * r, k // r, k // r)
    return F.conv2d(_space_to_depth(x, r), weight, conv.bias)


class Encoder(nn.Module):
    """Pixels -> 512-d features.  Input uint8 (or float already in [0, 255])."""

    def __init__(self, frame_stack: int = 4, feature_dim: int = FEATURE_DIM, layer_norm: bool = True) -> None:
        super().__init__()
        self.frame_stack, self.feature_dim, self.layer_norm = frame_stack, feature_dim, layer_norm
        self.conv1 = nn.Conv2d(frame_stack, 32, kernel_size=8, stride=4)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=4, stride=2)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3, stride=1)
        self.fc = nn.Linear(64 * 7 * 7, feature_dim)

        def norm(shape: list[int]) -> nn.Module:
            return nn.LayerNorm(shape) if layer_norm else nn.Identity()

        self.ln1, self.ln2, self.ln3 = norm([32, 20, 20]), norm([64, 9, 9]), norm([64, 7, 7])
        self.ln4 = norm([feature_dim])
        for layer in (self.conv1, self.conv2, self.conv3, self.fc):
            nn.init.kaiming_normal_(layer.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
            nn.init.zeros_(layer.bias)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # in-place scaling: `obs.float() / 255` allocates twice and cost 20x more here; but a float32
        # input is returned as is by `.to`, and must not be divided in the caller's tensor.  Under
        # bf16 autocast the pixels go to bf16 at once (0..255 are exact in bf16): the convolution
        # would cast them anyway, and the fp32 copies of the batch were a fifth of a bf16 update
        device = obs.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
        x = obs.to(dtype)
        x = x.mul(1.0 / 255.0) if x is obs else x.mul_(1.0 / 255.0)
        # the space-to-depth form only pays off in fp32 when a backward pass follows; oneDNN's bf16
        # stride-4 backward is fast, and there the extra copy made the first layer ~1.8x slower
        s2d = torch.is_grad_enabled() and dtype == torch.float32
        conv1 = strided_conv(x, self.conv1) if s2d else self.conv1(x)
        x = F.leaky_relu(self.ln1(conv1), LEAKY_SLOPE)
        x = F.leaky_relu(self.ln2(self.conv2(x)), LEAKY_SLOPE)
        x = F.leaky_relu(self.ln3(self.conv3(x)), LEAKY_SLOPE)
        return F.leaky_relu(self.ln4(self.fc(x.flatten(1))), LEAKY_SLOPE)


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Trunk(nn.Module):
    """Encoder features -> a few bounded features: Linear -> LayerNorm -> tanh (DrQ-v2's trunk).

    Without it the heads see 512 unit-variance features beside a 53-d kinematic
    state whose decisive entries are ~0.01-0.3: the state is drowned out.  The
    trunk sits after the encoder, which stays exactly the analysed LayerNorm CNN.
    """

    def __init__(self, feature_dim: int, trunk_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(feature_dim, trunk_dim), nn.LayerNorm(trunk_dim), nn.Tanh())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def _trunk(feature_dim: int, trunk_dim: int) -> tuple[nn.Module, int]:
    """The trunk (or identity when ``trunk_dim`` is 0) and the width of what it outputs."""
    return (Trunk(feature_dim, trunk_dim), trunk_dim) if trunk_dim > 0 else (nn.Identity(), feature_dim)


class ActorHead(nn.Module):
    """[trunk(features), kinematic state] -> action in [-1, 1]."""

    def __init__(self, feature_dim: int, state_dim: int, action_dim: int, hidden: tuple[int, ...] = (256, 256),
                 trunk_dim: int = 0) -> None:
        super().__init__()
        self.trunk, width = _trunk(feature_dim, trunk_dim)
        self.net = mlp(width + state_dim, hidden, action_dim)
        # Start near a = 0 (DDPG's small final-layer init): a randomly sloped first
        # critic otherwise drives tanh into saturation, where its gradient vanishes
        # and the policy stays stuck at full lock.
        nn.init.uniform_(self.net[-1].weight, -3e-3, 3e-3)
        nn.init.uniform_(self.net[-1].bias, -3e-3, 3e-3)

    def pre_tanh(self, features: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """The action before the tanh squashing (what the saturation penalty acts on)."""
        return self.net(torch.cat([self.trunk(features), state], dim=1))

    def forward(self, features: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pre_tanh(features, state))


class CriticHeads(nn.Module):
    """``num_q`` independent Q heads on [trunk(features), state, action] (2 for TD3, 1 for DDPG); one trunk."""

    def __init__(
        self, feature_dim: int, state_dim: int, action_dim: int, num_q: int = 2, hidden: tuple[int, ...] = (256, 256),
        trunk_dim: int = 0,
    ) -> None:
        super().__init__()
        self.trunk, width = _trunk(feature_dim, trunk_dim)
        self.qs = nn.ModuleList(mlp(width + state_dim + action_dim, hidden, 1) for _ in range(num_q))

    def forward(self, features: torch.Tensor, state: torch.Tensor, action: torch.Tensor) -> list[torch.Tensor]:
        x = torch.cat([self.trunk(features), state, action], dim=1)
        return [q(x) for q in self.qs]

    def q1(self, features: torch.Tensor, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.qs[0](torch.cat([self.trunk(features), state, action], dim=1))


class Actor(nn.Module):
    """The deployable policy: encoder + actor head.  This is what the policy node runs."""

    def __init__(self, encoder: Encoder, head: ActorHead) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, obs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(obs), state)


def build_actor(architecture: ActorArchitecture) -> Actor:
    a = architecture
    return Actor(Encoder(a.frame_stack, a.feature_dim, a.layer_norm),
                 ActorHead(a.feature_dim, a.state_dim, a.action_dim, a.hidden, a.trunk_dim))


def feature_stats(features: "torch.Tensor | np.ndarray") -> dict[str, float]:
    """Statistics of a (B, D) feature batch, as logged and published per encoder.

    l2_norm is the mean per-sample L2 norm (the number that reached 7e12 in the
    failed system); dead_fraction is the share of units never positive in the batch.
    """
    # numpy: one small batch, and the policy calls this per action (torch's per-op overhead dominated)
    f = features.detach().float().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, np.float32)
    f = f.reshape(-1, f.shape[-1]).astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", f, f))
    return {
        "l2_norm": float(norms.mean()),
        "l2_norm_max": float(norms.max()),
        "mean": float(f.mean()),
        "std": float(f.std()),
        "min": float(f.min()),
        "max": float(f.max()),
        "dead_fraction": float((f.max(axis=0) <= 0).mean()),
    }
