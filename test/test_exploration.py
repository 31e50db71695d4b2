"""Exploration: warm-up actions that move the car (throttle bias, smooth AR(1) steering), then
Gaussian noise around the policy's action, switching exactly at ``random_steps``."""
from __future__ import annotations

import numpy as np

from td3_drive.rl.exploration import Exploration, ExplorationConfig


def test_warm_up_drives_forward_with_smooth_steering_then_noise_around_the_policy() -> None:
    config = ExplorationConfig(noise_std=0.1, random_steps=2000, warmup_throttle=0.5, warmup_steer_std=0.5,
                               warmup_correlation=0.9)
    exploration = Exploration(config, seed=3)
    policy = np.array([0.3, -0.2], np.float32)
    warm = np.array([exploration(policy) for _ in range(2000)])
    assert exploration.steps == 2000
    # throttle bias: the mean throttle/brake action is clearly positive (uniform noise averages 0)
    assert 0.35 < warm[:, 1].mean() < 0.55
    # the warm-up ignores the policy: its steering is centred on 0, not on 0.3
    assert abs(warm[:, 0].mean()) < 0.1
    # AR(1) with rho 0.9: consecutive steering actions are correlated, not per-tick jitter
    lag1 = np.corrcoef(warm[:-1, 0], warm[1:, 0])[0, 1]
    assert 0.8 < lag1 < 0.95
    assert np.all(np.abs(warm) <= 1.0) and warm.dtype == np.float32
    # step 2001 on: the policy's action plus N(0, 0.1), clipped
    after = np.array([exploration(policy) for _ in range(2000)])
    np.testing.assert_allclose(after.mean(axis=0), policy, atol=0.01)
    np.testing.assert_allclose(after.std(axis=0), [0.1, 0.1], rtol=0.1)


def test_switch_is_exactly_at_random_steps_and_seeded() -> None:
    config = ExplorationConfig(noise_std=0.0, random_steps=5)
    a, b = Exploration(config, seed=1), Exploration(config, seed=1)
    policy = np.array([0.25, 0.75], np.float32)
    first = [a(policy) for _ in range(7)]
    assert all(not np.allclose(x, policy) for x in first[:5])
    assert all(np.allclose(x, policy) for x in first[5:])  # noise 0: exactly the policy from step 6
    np.testing.assert_array_equal(np.array(first), np.array([b(policy) for _ in range(7)]))
