"""The driving task as a Gymnasium environment: ``gymnasium.make("td3_drive/Racetrack-v0")``.

Same task as the node stack, built from the same functions: the simulator
(:class:`RacetrackSim`), the preprocessing (:func:`to_gray84`, :class:`FrameStack`,
:func:`kinematic_state`), the action mapping (:func:`action_to_control_fields`) and
the reward (:class:`RewardFunction`).  Stable-Baselines3 or CleanRL agents run on
it unchanged; ``test/test_gym_env.py`` checks that a seeded episode gives the same
observations and rewards here and through the nodes.

Observation: ``{"image": uint8 (4, 84, 84), "state": float32 (53,)}``.
Action: ``[steer, throttle - brake]`` in [-1, 1]^2.
Hazards (a car in the ego's lane that only the image shows, ``sim/hazards.py``) come with
``SimConfig(hazard_share=..., hazards=...)``; ``info["hazard"]`` names the episode's.
The camera is the chase view, or CARLA's front camera in perspective with ``SimConfig(camera="front")``
(any image size: the observation is 84x84 either way).
Episode ends as the reward says: collision, off-route, route completed (terminated),
``max_episode_steps`` (truncated).  ``reset(seed=s)`` runs simulator seed ``s``, exactly
the episode the simulator node runs for seed ``s``; without a seed, episode k of the
environment runs simulator seed ``sim_config.seed + k`` (k = 0, 1, ...), as the node does.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from td3_drive import topics as T
from td3_drive.driving.control import ACTION_DIM, action_to_control_fields
from td3_drive.driving.observation import (
    STATE_DIM,
    FrameStack,
    RouteProjection,
    VehiclePose,
    kinematic_state,
    to_gray84,
)
from td3_drive.driving.reward import RewardConfig, RewardFunction, StepEvents
from td3_drive.sim.racetrack import RacetrackSim, SimConfig, SimFrame

ENV_ID = "td3_drive/Racetrack-v0"


def _pose(frame: SimFrame) -> VehiclePose:
    return VehiclePose(x=frame.x, y=frame.y, yaw=frame.yaw, speed=frame.speed)


class RacetrackDriveEnv(gym.Env):
    """The embedded driving task behind the Gymnasium API (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, sim_config: SimConfig | None = None, reward_config: RewardConfig | None = None,
                 frame_stack: int = 4, render_mode: str | None = None) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.sim_config = sim_config or SimConfig(random_start=True)
        self.reward_config = reward_config or RewardConfig()
        self.render_mode = render_mode
        self.sim = RacetrackSim(self.sim_config)
        self.reward_fn = RewardFunction(self.reward_config)
        self.stack = FrameStack(frame_stack)
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (frame_stack, T.FRAME_SIZE, T.FRAME_SIZE), np.uint8),
            "state": spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._episode = -1
        self._route = np.zeros((0, 2))
        self._frame: SimFrame | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._episode += 1
        sim_seed = int(seed) if seed is not None else self.sim_config.seed + self._episode
        self._frame = frame = self.sim.reset(sim_seed)
        self._route = self.sim.route()
        projection = self.reward_fn.reset(_pose(frame), self._route)
        self.stack.reset(to_gray84(frame.image_bgra, "bgra8"))
        return self._observation(frame, projection), {"seed": sim_seed, "hazard": frame.hazard}

    def step(self, action: np.ndarray):
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        control, _ = action_to_control_fields(action)  # a non-finite action brakes, as the policy node does
        self._frame = frame = self.sim.step(control["throttle"], control["steer"], control["brake"])
        result = self.reward_fn.step(_pose(frame), self._route,
                                     StepEvents(collision=frame.collision, lane_invasions=int(bool(frame.lane_invasion))))
        self.stack.push(to_gray84(frame.image_bgra, "bgra8"))
        info = {"reason": result.reason, "reward_components": result.components, "speed": frame.speed,
                "hazard": frame.hazard}
        return self._observation(frame, result.projection), result.total, result.terminated, result.truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self._frame is None:
            return None
        return np.ascontiguousarray(self._frame.image_bgra[..., 2::-1])

    def close(self) -> None:
        self.sim.close()

    def _observation(self, frame: SimFrame, projection: RouteProjection) -> dict[str, np.ndarray]:
        # the reward already projected this pose on the route: reuse it, as the nodes do
        return {"image": self.stack.stacked(),
                "state": kinematic_state(_pose(frame), self._route, projection=projection)}
