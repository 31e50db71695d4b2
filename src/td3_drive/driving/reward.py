"""Reward, termination and truncation from what the bridge topics give.

Inputs are only the odometry pose, the route (nav_msgs/Path) and the collision /
lane-invasion events, so the reward is the same function in CARLA and in the
embedded simulator.  The route geometry is ``observation.project_on_route``:
one implementation for the observation and the reward.

Scale: the shaped terms keep one step's total roughly in [-1, 1] (about +0.6 when
driving centred at the target speed, 0 when standing still); terminal events add
a one-off bonus or penalty of a few units.  Every component is bounded and finite.

Lessons from the failed predecessor built in: the stopped penalty is small and only
starts after a grace period (its agent learned to stand still because stop penalties
dominated); a lane touch is penalised, never terminal (it had 37-step episodes);
the time limit is a truncation, so the learner still bootstraps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from td3_drive.driving.observation import InvalidMessage, RouteProjection, VehiclePose, project_on_route, wrap_angle
from td3_drive.settings import setting

__all__ = ["RewardConfig", "StepEvents", "RewardStep", "RewardFunction", "COMPONENTS"]

#: every key of RewardStep.components, in a stable order for logging
COMPONENTS = ("efficiency", "lane_keeping", "heading", "comfort", "progress", "waypoint",
              "goal", "collision", "offroad", "lane_invasion", "stopped")


@dataclass
class RewardConfig:
    """Weights and limits of the reward.  Components are reported already weighted."""

    target_speed: float = setting(8.0, "m/s; efficiency peaks when the speed along the route equals it")
    w_efficiency: float = setting(0.4, "efficiency = w * clip(1 - |v_fwd - target| / target, -1, 1), v_fwd = speed * "
                                       "cos(heading error)")
    w_lateral: float = setting(0.3, "lane keeping = -w * min(|lateral| / max_lateral_deviation, 1)")
    w_heading: float = setting(0.2, "heading = -w * |heading error| / pi")
    w_comfort: float = setting(0.05, "comfort = -w * tanh(|jerk| / jerk_scale); jerk of the (longitudinal, lateral) "
                                     "acceleration")
    jerk_scale: float = setting(30.0, "m/s^3; the comfort penalty reaches 76% of w_comfort at this jerk (tanh(1))")
    w_progress: float = setting(0.5, "per metre of arc length gained along the route (negative when going back)")
    max_progress_speed: float = setting(20.0, "m/s; one step's progress is clipped to +-max_progress_speed * dt (1 m "
                                              "at 20 Hz), so a projection that jumps (route passing near itself, "
                                              "route replaced) cannot pay out a lot")
    waypoint_bonus: float = setting(0.02, "per route waypoint passed for the first time (small: the route spacing "
                                          "sets its rate)")
    goal_bonus: float = setting(10.0, "once, when the route is completed")
    collision_penalty: float = setting(10.0, "once, on collision (terminates)")
    offroad_penalty: float = setting(5.0, "once, when |lateral| > max_lateral_deviation (terminates 'off_route'); "
                                          "the bridge has no off-road sensor, so leaving the route corridor is what "
                                          "'off-road' means here")
    lane_invasion_penalty: float = setting(0.2, "per step with at least one lane invasion event (never terminates)")
    stopped_penalty: float = setting(0.05, "per step once the car has been stopped for more than stopped_grace_steps")
    stopped_speed: float = setting(0.2, "m/s; |speed| below this counts as stopped")
    stopped_grace_steps: int = setting(40, "steps stopped before the stopped penalty starts (40 = 2 s at 20 Hz: "
                                           "starting, traffic)")
    max_lateral_deviation: float = setting(2.5, "m; |lateral deviation| beyond this terminates the episode "
                                                "('off_route')")
    goal_distance: float = setting(2.0, "m; remaining route below this completes the route ('route_completed')")
    max_episode_steps: int = setting(1000, "steps; reaching it truncates ('timeout'): not a terminal state, the "
                                           "learner bootstraps")
    dt: float = setting(0.05, "s per step (CARLA fixed_delta_seconds), used for accelerations and jerk")


@dataclass
class StepEvents:
    """Bridge events received during one step."""

    #: any carla_msgs/CarlaCollisionEvent this step
    collision: bool = False
    #: number of carla_msgs/CarlaLaneInvasionEvent messages this step
    lane_invasions: int = 0


@dataclass
class RewardStep:
    """One step's reward: ``total`` = sum of ``components`` (already weighted)."""

    total: float
    components: dict[str, float]
    terminated: bool
    truncated: bool
    #: "collision", "off_route", "route_completed", "timeout", or "" while the episode runs
    reason: str
    #: the route projection used, so the caller can reuse it for kinematic_state(..., projection=)
    projection: RouteProjection | None = field(default=None, repr=False)


class RewardFunction:
    """Stateful reward for one episode: ``reset(pose, route)`` then ``step(pose, route, events)``."""

    def __init__(self, config: RewardConfig | None = None) -> None:
        self.config = config or RewardConfig()
        self._ready = False
        self.steps = 0

    def reset(self, pose: VehiclePose, route: np.ndarray) -> RouteProjection:
        """Start an episode at ``pose`` on ``route``; returns the initial projection."""
        _check_pose(pose)
        proj = project_on_route(pose, route)
        self.steps = 0
        self._ready = True
        self._prev_s = proj.s_along
        self._farthest_s = proj.s_along
        self._prev_speed = pose.speed
        self._prev_yaw = pose.yaw
        self._prev_accel: tuple[float, float] | None = None  # unknown until the second step
        self._stopped_steps = 0
        return proj

    def resync(self, pose: VehiclePose, route: np.ndarray, lost_steps: int = 1) -> None:
        """``lost_steps`` steps were never scored: measure the next one from ``pose``.

        Unlike ``reset`` the episode goes on: lost steps count towards the time limit,
        and the farthest progress and the stopped counter are kept.
        """
        _check_pose(pose)
        self._prev_s = project_on_route(pose, route).s_along
        self._prev_speed, self._prev_yaw, self._prev_accel = pose.speed, pose.yaw, None
        self.steps += lost_steps

    def step(self, pose: VehiclePose, route: np.ndarray, events: StepEvents | None = None) -> RewardStep:
        """Reward for arriving at ``pose`` after one step of ``config.dt`` seconds."""
        if not self._ready:
            raise RuntimeError("RewardFunction.step before reset")
        _check_pose(pose)
        cfg = self.config
        events = events or StepEvents()
        route = np.asarray(route, dtype=np.float64)
        proj = project_on_route(pose, route)
        self.steps += 1
        c = dict.fromkeys(COMPONENTS, 0.0)

        # efficiency: only speed ALONG the route counts, so reversing or driving the wrong way is negative
        v_forward = pose.speed * math.cos(proj.heading_error)
        c["efficiency"] = cfg.w_efficiency * _clip(1.0 - abs(v_forward - cfg.target_speed) / cfg.target_speed,
                                                   -1.0, 1.0)
        c["lane_keeping"] = -cfg.w_lateral * min(abs(proj.lateral) / cfg.max_lateral_deviation, 1.0)
        c["heading"] = -cfg.w_heading * abs(proj.heading_error) / math.pi

        # comfort: jerk of the planar acceleration (longitudinal dv/dt, lateral v * yaw rate)
        yaw_rate = wrap_angle(pose.yaw - self._prev_yaw) / cfg.dt
        accel = ((pose.speed - self._prev_speed) / cfg.dt, pose.speed * yaw_rate)
        if self._prev_accel is not None:
            jerk = math.hypot(accel[0] - self._prev_accel[0], accel[1] - self._prev_accel[1]) / cfg.dt
            c["comfort"] = -cfg.w_comfort * math.tanh(jerk / cfg.jerk_scale)
        self._prev_accel, self._prev_speed, self._prev_yaw = accel, pose.speed, pose.yaw

        # progress along the route, and a small bonus per waypoint reached for the first time
        max_ds = cfg.max_progress_speed * cfg.dt
        ds = _clip(proj.s_along - self._prev_s, -max_ds, max_ds)
        c["progress"] = cfg.w_progress * ds
        new_farthest = max(self._farthest_s, self._prev_s + ds)
        if new_farthest > self._farthest_s and cfg.waypoint_bonus:
            vertex_s = np.concatenate(([0.0], np.cumsum(np.hypot(*np.diff(route, axis=0).T))))
            passed = np.count_nonzero((vertex_s > self._farthest_s) & (vertex_s <= new_farthest))
            c["waypoint"] = cfg.waypoint_bonus * passed
        self._farthest_s = new_farthest
        self._prev_s = proj.s_along

        if events.lane_invasions > 0:
            c["lane_invasion"] = -cfg.lane_invasion_penalty  # once per step, however many markings
        self._stopped_steps = self._stopped_steps + 1 if abs(pose.speed) < cfg.stopped_speed else 0
        if self._stopped_steps > cfg.stopped_grace_steps:
            c["stopped"] = -cfg.stopped_penalty

        # one terminal event per step, most severe first
        reason = ""
        if events.collision:
            reason, c["collision"] = "collision", -cfg.collision_penalty
        elif abs(proj.lateral) > cfg.max_lateral_deviation:
            reason, c["offroad"] = "off_route", -cfg.offroad_penalty
        elif proj.remaining < cfg.goal_distance:
            reason, c["goal"] = "route_completed", cfg.goal_bonus
        terminated = bool(reason)
        truncated = not terminated and self.steps >= cfg.max_episode_steps
        if truncated:
            reason = "timeout"
        return RewardStep(total=float(sum(c.values())), components=c, terminated=terminated,
                          truncated=truncated, reason=reason, projection=proj)


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def _check_pose(pose: VehiclePose) -> None:
    if not all(math.isfinite(v) for v in (pose.x, pose.y, pose.yaw, pose.speed)):
        raise InvalidMessage("non_finite", "pose has NaN/Inf")
