"""Exploration for driving: warm-up actions that actually move the car, then Gaussian noise.

Uniform random actions in [-1, 1]^2 average to zero net throttle, so the car
never leaves the start (a failure of the system we replace).  Warm-up actions
keep the throttle positive on average and steer with temporally correlated
noise; afterwards the policy's action gets N(0, sigma) noise, clipped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class ExplorationConfig:
    noise_std: float = 0.1  # Gaussian noise on the policy's action (TD3 paper: 0.1)
    random_steps: int = 1000  # warm-up steps of random actions before the policy drives
    warmup_throttle: float = 0.5  # mean of the throttle/brake action during warm-up
    warmup_steer_std: float = 0.5
    warmup_correlation: float = 0.9  # AR(1) coefficient: smooth steering, not per-tick jitter


class Exploration:
    def __init__(self, config: ExplorationConfig, action_dim: int = 2, seed: int = 0) -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)
        self._ar = np.zeros(action_dim)
        self.steps = 0

    def reset(self) -> None:
        self._ar[:] = 0.0

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: the RNG, the warm-up steering's AR(1) state, the step count."""
        return {"rng": self.rng.bit_generator.state, "ar": self._ar.tolist(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self._ar = np.asarray(state["ar"], dtype=np.float64)
        self.steps = int(state["steps"])

    def __call__(self, policy_action: np.ndarray) -> np.ndarray:
        """The action to apply given the policy's deterministic action."""
        cfg = self.config
        self.steps += 1
        if self.steps <= cfg.random_steps:
            rho = cfg.warmup_correlation
            self._ar = rho * self._ar + np.sqrt(1 - rho**2) * self.rng.standard_normal(self._ar.shape)
            action = cfg.warmup_steer_std * self._ar
            action[1] += cfg.warmup_throttle
        else:
            action = policy_action + cfg.noise_std * self.rng.standard_normal(policy_action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
