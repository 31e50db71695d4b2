"""TD3 (and DDPG, as a configuration of it) on pixels + kinematic state.

Read top to bottom: :class:`LearnerConfig` names the hyperparameters as in the
TD3 paper; :class:`Learner` owns the networks, their targets and optimizers;
:meth:`Learner.update` is one gradient step on a replay batch.

Encoder modes
  ``separate`` (default, as Stable-Baselines3): the actor and the critic each own
      an encoder.  The actor objective is -Q1(critic_encoder(s), pi(actor_encoder(s)))
      -- the critic is always queried on features of its *own* encoder, the ones it
      was trained on.  (The failed system fed it actor-encoder features; its actor
      Q reached +14,000 while the critic's own estimate was -24.)
  ``shared`` (DrQ-v2): one encoder trained by the critic loss; the actor works on
      detached features; the encoder has no target copy and next observations are
      encoded by the online encoder without gradients.

Cost: encoder passes dominate an update on CPU, so each batch is encoded once
per network: the critic's features of ``obs`` are reused (detached) by the actor
loss, exactly as DrQ-v2 reuses them.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from td3_drive import topics as T
from td3_drive.rl.models import FEATURE_DIM, Actor, ActorArchitecture, ActorHead, CriticHeads, Encoder, feature_stats
from td3_drive.settings import setting

if TYPE_CHECKING:  # only for annotations: the learner takes any object with these fields
    from td3_drive.rl.replay import Batch

log = logging.getLogger(__name__)

ALGOS = ("td3", "ddpg")
PRECISIONS = ("fp32", "bf16", "auto")
#: |a| above this counts as a saturated action (logged as train/action_saturated_fraction)
SATURATED = 0.99
ENCODER_MODES = ("separate", "shared")


@dataclass
class LearnerConfig:
    """Hyperparameters (TD3 paper names and defaults unless noted)."""

    algo: str = setting("td3", "td3 | ddpg (ddpg forces num_q=1, policy_noise=0, policy_freq=1)")
    encoder_mode: str = setting("separate", "separate (actor and critic encoders, SB3) | shared (one encoder trained "
                                            "by the critic, DrQ-v2)")
    layer_norm: bool = setting(True, "LayerNorm after every conv and the encoder's linear layer (false: the ablation)")
    gamma: float = setting(0.99, "discount")
    tau: float = setting(0.005, "target network soft-update rate")
    policy_noise: float = setting(0.2, "std of the target policy smoothing noise")
    noise_clip: float = setting(0.5, "clip of the target policy smoothing noise")
    policy_freq: int = setting(2, "critic updates per actor and target update")
    num_q: int = setting(2, "critics (clipped double Q: 2)")
    lr_cnn: float = setting(1e-4, "Adam learning rate of the encoder")
    lr_mlp: float = setting(3e-4, "Adam learning rate of the MLP heads")
    max_grad_norm_actor: float | None = setting(10.0, "actor gradient norm clip (0 or None: none)")
    max_grad_norm_critic: float | None = setting(10.0, "critic gradient norm clip (0 or None: none)")
    augment: bool = setting(False, "DrQ random shift of both observations of a transition")
    augment_pad: int = setting(4, "pixels of padding for the random shift")
    frame_stack: int = setting(4, "frames per observation")
    state_dim: int = setting(T.STATE_DIM, "kinematic state size")
    action_dim: int = setting(2, "action size (steer, throttle_or_brake)")
    hidden: tuple[int, ...] = setting((256, 256), "MLP head widths")
    trunk_dim: int = setting(50, "width of the Linear -> LayerNorm -> tanh trunk between the encoder and each head "
                                 "(DrQ-v2: 50); 0: none")
    action_penalty: float = setting(1e-2, "weight of mean(pre-tanh action ^ 2) in the actor loss: Adam follows even "
                                          "a tiny, same-signed early dQ/da at full step size and pins tanh at +-1, "
                                          "where its gradient vanishes; this pulls it back")
    precision: str = setting("fp32", "network passes of the update in 'bf16' autocast (weights, optimizer state and "
                                     "losses stay fp32), 'fp32', or 'auto': bf16 where the hardware runs it natively "
                                     "(CUDA with bf16, CPUs with AVX512-BF16/AMX)")

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        if self.encoder_mode not in ENCODER_MODES:
            raise ValueError(f"encoder_mode must be one of {ENCODER_MODES}, got {self.encoder_mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.algo == "ddpg":
            self.num_q, self.policy_noise, self.noise_clip, self.policy_freq = 1, 0.0, 0.0, 1
        self.hidden = tuple(self.hidden)
        if self.policy_freq < 1 or self.num_q < 1 or not 0 < self.tau <= 1 or not 0 <= self.gamma <= 1:
            raise ValueError(f"invalid learner config: {self}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "LearnerConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown learner config keys: {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    def actor_architecture(self) -> ActorArchitecture:
        """What a policy must match to load this learner's actor weights."""
        return ActorArchitecture(frame_stack=self.frame_stack, state_dim=self.state_dim, action_dim=self.action_dim,
                                 layer_norm=self.layer_norm, hidden=tuple(self.hidden), feature_dim=FEATURE_DIM,
                                 trunk_dim=self.trunk_dim)


def random_shift(obs: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """DrQ augmentation: replicate-pad by ``pad`` and crop back at a random offset per sample."""
    n, c, h, w = obs.shape
    padded = F.pad(obs.float(), (pad, pad, pad, pad), mode="replicate").to(obs.dtype)
    shift = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device="cpu").to(obs.device)
    rows = (torch.arange(h, device=obs.device)[None, :] + shift[:, :1])  # (n, h)
    cols = (torch.arange(w, device=obs.device)[None, :] + shift[:, 1:])  # (n, w)
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def smoothed_target_action(pi_next: torch.Tensor, noise: torch.Tensor, noise_clip: float) -> torch.Tensor:
    """TD3 target policy smoothing: clip(pi'(s') + clip(noise, -c, c), -1, 1)."""
    return (pi_next + noise.clamp(-noise_clip, noise_clip)).clamp(-1.0, 1.0)


def td3_target(reward: torch.Tensor, discount: torch.Tensor, next_qs: list[torch.Tensor]) -> torch.Tensor:
    """Clipped double-Q target r + discount * min_i Q_i'.  ``discount`` already holds gamma^n * (1 - terminated)."""
    return reward + discount * torch.min(torch.cat(next_qs, dim=1), dim=1, keepdim=True).values


def polyak_(target: nn.Module, source: nn.Module, tau: float) -> None:
    with torch.no_grad():
        t_params = list(target.parameters())
        torch._foreach_lerp_(t_params, list(source.parameters()), tau)


def _grad_norm(params: list[nn.Parameter], max_norm: float | None) -> tuple[float, float]:
    """Total gradient norm before and after clipping, both measured (inf/nan before means: skip the step)."""
    before = float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf")))
    if not max_norm or not math.isfinite(before) or before <= max_norm:
        return before, before
    grads = [p.grad.detach() for p in params if p.grad is not None]
    return before, float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matmuls and convolutions natively (not emulated, which is slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def _all_finite(modules: Iterable[nn.Module]) -> bool:
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


@dataclass
class HealthCounters:
    """Updates skipped by the health guard, by reason."""

    skipped: dict[str, int] = field(default_factory=dict)
    consecutive_bad: int = 0
    poisoned: bool = False  # a parameter became non-finite: never export again

    def bad(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.consecutive_bad += 1

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())


class Learner:
    """Networks, targets, optimizers and the TD3 update."""

    def __init__(self, config: LearnerConfig | None = None, device: str | torch.device = "cpu", seed: int = 0):
        self.config = cfg = config or LearnerConfig()
        self.device = torch.device(device)
        torch.manual_seed(seed)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.num_updates = 0
        self.num_actor_updates = 0
        #: whether the update's network passes run in bf16 autocast (``precision``, resolved for this device)
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and native_bf16(self.device))
        self.health = HealthCounters()

        def encoder() -> Encoder:
            return Encoder(cfg.frame_stack, FEATURE_DIM, cfg.layer_norm)

        self.critic_encoder = encoder()
        self.critic_heads = CriticHeads(FEATURE_DIM, cfg.state_dim, cfg.action_dim, cfg.num_q, cfg.hidden, cfg.trunk_dim)
        self.actor_encoder = encoder() if cfg.encoder_mode == "separate" else self.critic_encoder
        self.actor_head = ActorHead(FEATURE_DIM, cfg.state_dim, cfg.action_dim, cfg.hidden, cfg.trunk_dim)
        # Targets: encoders have target copies only in separate mode (DrQ-v2 has none).
        self.critic_heads_target = copy.deepcopy(self.critic_heads)
        self.actor_head_target = copy.deepcopy(self.actor_head)
        if cfg.encoder_mode == "separate":
            self.critic_encoder_target = copy.deepcopy(self.critic_encoder)
            self.actor_encoder_target = copy.deepcopy(self.actor_encoder)
        for module in self.modules().values():
            module.to(self.device)
        for module in self.target_modules():
            module.requires_grad_(False)

        self.critic_optimizer = torch.optim.Adam(fused=True, params=[
            {"params": self.critic_encoder.parameters(), "lr": cfg.lr_cnn, "name": "critic_cnn"},
            {"params": self.critic_heads.parameters(), "lr": cfg.lr_mlp, "name": "critic_mlp"},
        ])
        actor_groups = [{"params": self.actor_head.parameters(), "lr": cfg.lr_mlp, "name": "actor_mlp"}]
        if cfg.encoder_mode == "separate":
            actor_groups.insert(0, {"params": self.actor_encoder.parameters(), "lr": cfg.lr_cnn, "name": "actor_cnn"})
        self.actor_optimizer = torch.optim.Adam(actor_groups, fused=True)
        self._critic_params = [p for g in self.critic_optimizer.param_groups for p in g["params"]]
        self._actor_params = [p for g in self.actor_optimizer.param_groups for p in g["params"]]

    # ------------------------------------------------------------------ modules
    def modules(self) -> dict[str, nn.Module]:
        """Every network by a stable name (checkpoint keys)."""
        named = {
            "critic_encoder": self.critic_encoder, "critic_heads": self.critic_heads,
            "actor_head": self.actor_head,
            "critic_heads_target": self.critic_heads_target, "actor_head_target": self.actor_head_target,
        }
        if self.config.encoder_mode == "separate":
            named.update(
                actor_encoder=self.actor_encoder,
                critic_encoder_target=self.critic_encoder_target,
                actor_encoder_target=self.actor_encoder_target,
            )
        return named

    def target_modules(self) -> list[nn.Module]:
        return [m for name, m in self.modules().items() if name.endswith("_target")]

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"critic": self.critic_optimizer, "actor": self.actor_optimizer}

    def actor(self) -> Actor:
        """The deployable actor (shares parameters with the learner; copy before export)."""
        return Actor(self.actor_encoder, self.actor_head)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.actor_head(self.actor_encoder(obs.to(self.device)), state.to(self.device))

    # ------------------------------------------------------------------ update
    def update(self, batch: Batch) -> dict[str, float]:
        """One TD3 step.  Returns scalar metrics; actor metrics only when the actor updated."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self._update(batch)

    def _update(self, batch: Batch) -> dict[str, float]:
        cfg = self.config
        self.num_updates += 1
        obs, next_obs = batch.obs.to(self.device), batch.next_obs.to(self.device)
        if cfg.augment:
            obs = random_shift(obs, cfg.augment_pad, self.generator)
            next_obs = random_shift(next_obs, cfg.augment_pad, self.generator)
        state, next_state = batch.state.to(self.device), batch.next_state.to(self.device)
        action, reward, discount = batch.action.to(self.device), batch.reward.to(self.device), batch.discount.to(self.device)

        y = self.critic_target(next_obs, next_state, reward, discount)
        critic_features = self.critic_encoder(obs)
        qs = self.critic_heads(critic_features, state, action)
        critic_loss = sum(F.mse_loss(q.float(), y.float()) for q in qs)
        metrics: dict[str, float] = {
            "train/critic_loss": critic_loss.item(), "q/q1": qs[0].detach().mean().item(), "q/target": y.mean().item(),
        }
        critic_stats = feature_stats(critic_features)
        if not self._step(self.critic_optimizer, critic_loss, self._critic_params, cfg.max_grad_norm_critic,
                          critic_stats, "critic", metrics):
            return metrics

        # --- actor (delayed): maximise Q1 of the critic's OWN features of the same observation
        if self.num_updates % cfg.policy_freq == 0:
            detached_critic_features = critic_features.detach()
            actor_features = (
                self.actor_encoder(obs) if cfg.encoder_mode == "separate" else detached_critic_features
            )
            pre_tanh = self.actor_head.pre_tanh(actor_features, state)
            pi = torch.tanh(pre_tanh)
            actor_q = self.critic_heads.q1(detached_critic_features, state, pi)
            actor_loss = -actor_q.float().mean() + cfg.action_penalty * pre_tanh.float().pow(2).mean()
            abs_pi = pi.detach().abs()
            metrics.update({"train/actor_loss": actor_loss.item(), "q/actor_q": actor_q.detach().mean().item(),
                            "train/action_abs_mean": abs_pi.mean().item(),
                            "train/action_saturated_fraction": (abs_pi > SATURATED).float().mean().item()})
            # shared mode: the actor sees the critic's features, whose statistics are already known
            actor_stats = feature_stats(actor_features) if cfg.encoder_mode == "separate" else critic_stats
            if not self._step(self.actor_optimizer, actor_loss, self._actor_params, cfg.max_grad_norm_actor,
                              actor_stats, "actor", metrics):
                return metrics
            self.num_actor_updates += 1
            for target, source in self._target_pairs():
                polyak_(target, source, cfg.tau)
        self.health.consecutive_bad = 0
        return metrics

    @torch.no_grad()
    def critic_target(self, next_obs: torch.Tensor, next_state: torch.Tensor, reward: torch.Tensor,
                      discount: torch.Tensor) -> torch.Tensor:
        """y = r + discount * min_i Q_i'(s', clip(pi'(s') + clip(eps, -c, c), -1, 1)), eps ~ N(0, sigma)."""
        cfg = self.config
        if cfg.encoder_mode == "separate":
            next_actor_features = self.actor_encoder_target(next_obs)
            next_critic_features = self.critic_encoder_target(next_obs)
        else:
            next_actor_features = next_critic_features = self.critic_encoder(next_obs)
        pi_next = self.actor_head_target(next_actor_features, next_state)
        noise = torch.randn(pi_next.shape, generator=self.generator).to(self.device) * cfg.policy_noise
        next_action = smoothed_target_action(pi_next, noise, cfg.noise_clip)
        return td3_target(reward, discount, self.critic_heads_target(next_critic_features, next_state, next_action))

    def _target_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.critic_heads_target, self.critic_heads), (self.actor_head_target, self.actor_head)]
        if self.config.encoder_mode == "separate":
            pairs += [(self.critic_encoder_target, self.critic_encoder),
                      (self.actor_encoder_target, self.actor_encoder)]
        return pairs

    def _step(
        self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[nn.Parameter],
        max_norm: float | None, stats: dict[str, float], side: str, metrics: dict[str, float],
    ) -> bool:
        """Backward + guarded optimizer step.  False (and nothing changed) if anything is non-finite.

        ``stats``: :func:`feature_stats` of the features the loss was computed from.
        """
        for key, value in stats.items():
            metrics[f"features/{side}/{key}"] = value
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(loss.item()) or not math.isfinite(metrics[f"features/{side}/l2_norm_max"]):
            return self._skip(f"{side}_nonfinite_loss_or_features", metrics)
        loss.backward()
        before, after = _grad_norm(params, max_norm)
        metrics[f"grad/{side}_norm_before_clip"], metrics[f"grad/{side}_norm_after_clip"] = before, after
        if not math.isfinite(before):
            optimizer.zero_grad(set_to_none=True)
            return self._skip(f"{side}_nonfinite_grad", metrics)
        optimizer.step()
        return True

    def _skip(self, reason: str, metrics: dict[str, float]) -> bool:
        self.health.bad(reason)
        metrics["health/skipped_updates"] = float(self.health.total_skipped)
        log.warning("update %d skipped: %s (%d skipped so far)", self.num_updates, reason, self.health.total_skipped)
        return False

    def parameters_finite(self) -> bool:
        """Checked before exporting weights; a learner that ever held non-finite weights never exports."""
        if not self.health.poisoned and not _all_finite(self.modules().values()):
            self.health.poisoned = True
            log.error("non-finite parameters detected: weight export disabled until rollback")
        return not self.health.poisoned
