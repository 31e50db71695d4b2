"""Value overestimation as the TD3 paper measures it (Fujimoto et al. 2018, Fig. 1 and 2).

At a checkpoint, the deterministic actor drives a few evaluation episodes; at every state s_t of
them the critic's estimate Q1(s_t, a_t) is set against the discounted return actually received
from there, G_t = r_t + gamma r_{t+1} + gamma^2 r_{t+2} + ..., and both are averaged over the
states.  ``mean Q - mean G`` is the bias: positive = overestimation.

What Q estimates: the learner's target is the gamma-discounted sum of the 1-step rewards,
whatever ``n_step`` is: an n-step target r_t + ... + gamma^(n-1) r_{t+n-1} + gamma^n Q(s_{t+n}) is
the same sum with its tail bootstrapped (the replay's ``Batch.reward`` / ``Batch.discount``), so
G_t with the learner's gamma and the per-step rewards is the right comparison for any n.

The end of an episode: after a **termination** (collision, off route, route completed) nothing
more is received and the learner does not bootstrap, so G_t is complete.  After a **truncation**
(the time limit) the learner bootstraps, so its Q includes the return the car would have received
after the limit, which the episode never shows.  G_t counts that unknown tail as 0 and is then too
small by gamma^(T - t) V(s_T); rather than filling it with the critic's own estimate (which would
hide exactly the error measured), the states whose tail weight gamma^(T - t) exceeds
``tail_weight`` are marked unsettled and left out of the averages.  Running the episodes that
many steps past the training time limit keeps every state the learner trained on.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from td3_drive.rl.learner import Learner

__all__ = ["EpisodeReturns", "ValueBias", "discounted_returns", "q1_estimates", "settling_horizon"]

#: default largest weight gamma^(T - t) of the unseen tail for a state of a truncated episode to count
TAIL_WEIGHT = 0.01


def settling_horizon(gamma: float, tail_weight: float = TAIL_WEIGHT) -> int:
    """Steps h after which the rest of an episode weighs at most ``tail_weight`` (gamma^h <= tail_weight)."""
    if not 0 < tail_weight < 1:
        raise ValueError(f"tail_weight must be in (0, 1), got {tail_weight}")
    if gamma <= 0:
        return 1  # gamma 0: only r_t counts; the tail after the next state weighs nothing
    if gamma >= 1:
        raise ValueError("gamma 1 never settles: an undiscounted tail always weighs 1")
    return max(1, math.ceil(round(math.log(tail_weight) / math.log(gamma), 9)))


@dataclass(frozen=True)
class EpisodeReturns:
    """G_t for every state s_t of one episode, and whether it is complete enough to compare with Q."""

    returns: np.ndarray  # float64 (T,): G_t = sum_k gamma^k r_{t+k}, the tail after a truncation counted 0
    settled: np.ndarray  # bool (T,): terminated, or the unseen tail weighs <= tail_weight


def discounted_returns(rewards: Sequence[float] | np.ndarray, gamma: float, terminated: bool,
                       tail_weight: float = TAIL_WEIGHT) -> EpisodeReturns:
    """The discounted return from every state of an episode (``rewards[t]``: received for the action at s_t).

    ``terminated``: the episode ended in a terminal state (G complete everywhere); otherwise it was
    truncated and the states within :func:`settling_horizon` of its end are not settled (module docstring).
    """
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"rewards must be one episode's 1-d sequence, got shape {r.shape}")
    returns = np.empty_like(r)
    running = 0.0
    for t in range(len(r) - 1, -1, -1):  # G_t = r_t + gamma G_{t+1}, G_T = 0
        running = r[t] + gamma * running
        returns[t] = running
    if terminated:
        settled = np.ones(len(r), dtype=bool)
    else:  # the tail after s_T weighs gamma^(T - t) at s_t
        settled = np.arange(len(r)) <= len(r) - settling_horizon(gamma, tail_weight)
    return EpisodeReturns(returns, settled)


@contextmanager
def _evaluating(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Eval mode for the duration (no layer of ours differs, but a measurement must not depend on that)."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def q1_estimates(learner: Learner, obs: np.ndarray | torch.Tensor, state: np.ndarray | torch.Tensor,
                 action: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Q1(s, a) of the online critic for every (obs, state, action) row: float64 (N,).

    The critic sees its own encoder's features, as in the update; batched, without gradients,
    in eval mode and in fp32 (whatever precision the learner trains in).
    """
    obs, state, action = (torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
                          for x in (obs, state, action))
    if not len(obs) == len(state) == len(action):
        raise ValueError(f"obs, state and action differ in length: {len(obs)}, {len(state)}, {len(action)}")
    out = []
    with torch.no_grad(), _evaluating([learner.critic_encoder, learner.critic_heads]):
        for lo in range(0, len(obs), batch_size):
            device = learner.device
            features = learner.critic_encoder(obs[lo:lo + batch_size].to(device))
            q = learner.critic_heads.q1(features, state[lo:lo + batch_size].to(device, torch.float32),
                                        action[lo:lo + batch_size].to(device, torch.float32))
            out.append(q.float().reshape(-1).cpu())
    return torch.cat(out).double().numpy() if out else np.zeros(0)


@dataclass(frozen=True)
class ValueBias:
    """Mean Q estimate and mean true discounted return over the settled states of some episodes."""

    mean_q: float
    mean_return: float
    states: int  # settled states averaged over
    episodes: int

    @property
    def bias(self) -> float:
        """mean Q - mean true return: > 0 overestimates."""
        return self.mean_q - self.mean_return

    @classmethod
    def of(cls, q_values: Sequence[np.ndarray], returns: Sequence[EpisodeReturns]) -> "ValueBias":
        """Pool the settled states of every episode (each state weighs the same, as in the paper)."""
        if len(q_values) != len(returns):
            raise ValueError("one Q array per episode")
        q = [np.asarray(qv, dtype=np.float64)[r.settled] for qv, r in zip(q_values, returns)]
        g = [r.returns[r.settled] for r in returns]
        pooled_q = np.concatenate(q) if q else np.zeros(0)
        pooled_g = np.concatenate(g) if g else np.zeros(0)
        if not len(pooled_q):
            return cls(math.nan, math.nan, 0, len(returns))
        return cls(float(pooled_q.mean()), float(pooled_g.mean()), len(pooled_q), len(returns))

    def to_dict(self) -> dict[str, float | int]:
        return {"mean_q": self.mean_q, "mean_return": self.mean_return, "bias": self.bias, "states": self.states,
                "episodes": self.episodes}
