"""EpisodeScorer on a WorldState fed directly: no messages, no nodes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from td3_drive.driving.episode import EpisodeScorer, Unscored
from td3_drive.driving.observation import VehiclePose
from td3_drive.driving.reward import RewardConfig, RewardStep
from td3_drive.driving.world import WorldState

ROUTE = np.stack([np.arange(0.0, 400.0, 2.0), np.zeros(200)], axis=1)


def scorer(**reward) -> tuple[EpisodeScorer, WorldState, list]:
    drops: list = []
    world = WorldState(lambda reason, detail: drops.append(reason))
    world.set_route(ROUTE, 0.0)
    return EpisodeScorer(RewardConfig(**reward), world), world, drops


def at(world: WorldState, t: float, x: float, speed: float = 8.0) -> None:
    world.add_pose(t, VehiclePose(x, 0.0, 0.0, speed))


def test_a_step_is_scored_from_the_poses_stamped_at_its_two_ends():
    s, world, _ = scorer()
    s.begin(1.0)
    at(world, 1.0, 10.0)
    at(world, 1.05, 10.4)
    at(world, 1.10, 99.0)  # a newer pose must not be used for the step that ends at 1.05
    reward = s.score(1.0, 1.05)
    assert isinstance(reward, RewardStep) and not (reward.terminated or reward.truncated)
    assert reward.components["progress"] == pytest.approx(RewardConfig().w_progress * 0.4)
    assert (s.episode_steps, s.episode_return) == (1, pytest.approx(reward.total))
    assert s.components["progress"] == pytest.approx(reward.components["progress"]) and s.in_episode


def test_a_missing_pose_leaves_the_step_unscored_and_the_next_one_resyncs():
    s, world, _ = scorer()
    s.begin(1.0)
    at(world, 1.0, 10.0)
    at(world, 1.05, 10.4)
    assert isinstance(s.score(1.0, 1.05), RewardStep)
    assert s.score(1.05, 1.10) == Unscored("no_pose_at_stamp")  # the pose of 1.10 never came
    s.lose_step()
    at(world, 1.15, 11.2)
    at(world, 1.20, 11.6)
    reward = s.score(1.15, 1.20)
    # re-anchored at 1.15: the progress is that of 1.15 -> 1.20 only, the lost step still took time
    assert reward.components["progress"] == pytest.approx(RewardConfig().w_progress * 0.4)
    assert s.reward_fn.steps == 3 and s.episode_steps == 2


def test_an_episode_without_its_first_pose_waits_to_be_anchored():
    s, world, _ = scorer()
    s.begin(1.0)
    at(world, 1.05, 10.4)
    assert s.score(1.0, 1.05) == Unscored("no_pose_at_stamp")  # the teleport's pose is late: nothing to anchor
    s.lose_step()
    at(world, 1.10, 10.8)
    assert isinstance(s.score(1.05, 1.10), RewardStep) and s.reward_fn.steps == 2


def test_events_before_the_episode_start_belong_to_the_previous_episode():
    s, world, _ = scorer()
    world.add_event(0.95, "collision")  # the crash that ended the previous episode, delivered late
    s.begin(1.0)
    at(world, 1.0, 10.0)
    at(world, 1.05, 10.4)
    assert not s.score(1.0, 1.05).terminated
    world.add_event(1.10, "collision")
    at(world, 1.10, 10.8)
    reward = s.score(1.05, 1.10)
    assert reward.terminated and reward.reason == "collision" and not s.in_episode


def test_the_time_limit_truncates_and_ends_the_episode():
    s, world, _ = scorer(max_episode_steps=2)
    s.begin(1.0)
    for k in range(3):
        at(world, 1.0 + 0.05 * k, 10.0 + 0.4 * k)
    assert not s.score(1.0, 1.05).truncated and s.in_episode
    reward = s.score(1.05, 1.10)
    assert reward.truncated and not reward.terminated and reward.reason == "timeout" and not s.in_episode


def test_a_non_finite_reward_is_never_scored():
    s, world, _ = scorer()
    s.begin(1.0)
    at(world, 1.0, 10.0)
    at(world, 1.05, 10.4)
    s.reward_fn.step = lambda *a: RewardStep(math.nan, {"progress": math.nan}, False, False, "")
    unscored = s.score(1.0, 1.05)
    assert unscored.reason == "non_finite_reward" and "nan" in unscored.detail
    assert s.episode_steps == 0 and s.episode_return == 0.0


def test_a_new_episode_starts_from_zero():
    s, world, _ = scorer()
    s.begin(1.0)
    at(world, 1.0, 10.0)
    at(world, 1.05, 10.4)
    s.score(1.0, 1.05)
    s.begin(2.0)
    assert (s.episode_steps, s.episode_return, sum(s.components.values())) == (0, 0.0, 0.0) and s.in_episode
