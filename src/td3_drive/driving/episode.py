"""Scoring one vehicle's episode step by step, with the poses and events stamped at each step's ends.

The reward is anchored at the pose of the episode's first observation ("reset"),
and re-anchored at the start of the next scored step after steps were lost
("resync": the lost steps still took time).  A step whose poses have not been
kept, or whose reward is not finite, cannot be scored: the caller counts it lost
(:meth:`EpisodeScorer.lose_step`) and starts a new replay segment.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from td3_drive.driving.reward import COMPONENTS, RewardConfig, RewardFunction, RewardStep
from td3_drive.driving.world import WorldState


@dataclass(frozen=True)
class Unscored:
    """Why a step could not be scored."""

    reason: str  # no_pose_at_stamp | non_finite_reward
    detail: str = ""


class EpisodeScorer:
    """The reward of each step of one vehicle's episodes, and the episode's totals."""

    def __init__(self, config: RewardConfig, world: WorldState) -> None:
        self.world = world
        self.reward_fn = RewardFunction(config)
        self.in_episode = False
        self.episode_return, self.episode_steps = 0.0, 0
        self.components = dict.fromkeys(COMPONENTS, 0.0)
        #: "reset" until anchored at the episode's first pose, "resync" after lost steps, "" when anchored
        self._anchor = ""
        self._lost_steps = 0  # steps lost since the reward was last anchored
        self._episode_start_s = -np.inf  # events stamped up to here belong to the previous episode

    def begin(self, stamp_s: float) -> None:
        """An episode starts with the observation stamped ``stamp_s`` (its pose may arrive later)."""
        self.in_episode, self._episode_start_s = True, stamp_s
        self.episode_return, self.episode_steps = 0.0, 0
        self.components = dict.fromkeys(COMPONENTS, 0.0)
        self._anchor, self._lost_steps = "reset", 0

    def lose_step(self) -> None:
        """A step of this episode was lost: the next scored step re-anchors the reward."""
        self._anchor = self._anchor or "resync"  # an episode not yet anchored still needs its reset
        self._lost_steps += 1

    def score(self, start_s: float, end_s: float) -> RewardStep | Unscored:
        """The reward of the step from the observation stamped ``start_s`` to the one stamped ``end_s``.

        A terminated or truncated reward ends the episode (``in_episode`` turns False).
        """
        world, route = self.world, self.world.route
        if self._anchor:
            start = world.pose_at(start_s, exact=True)
            if start is None:
                return Unscored("no_pose_at_stamp")
            if self._anchor == "reset":
                # events up to the first tick (the crash before the teleport) are not this episode's,
                # however late they arrived; those of lost steps after it are
                world.take_events(until=self._episode_start_s)
                self.reward_fn.reset(start, route)
            if self._lost_steps:
                self.reward_fn.resync(start, route, self._lost_steps)
            self._anchor, self._lost_steps = "", 0
        pose = world.pose_at(end_s, exact=True)
        if pose is None:
            return Unscored("no_pose_at_stamp")
        reward = self.reward_fn.step(pose, route, world.take_events(until=end_s))
        if not math.isfinite(reward.total):  # never into the replay (it would refuse it anyway)
            return Unscored("non_finite_reward", str(reward.components))
        self.episode_return += reward.total
        self.episode_steps += 1
        for key, value in reward.components.items():
            self.components[key] += value
        if reward.terminated or reward.truncated:
            self.in_episode = False
        return reward
