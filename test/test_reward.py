"""Tests for td3_drive.driving.reward on scripted trajectories."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from td3_drive.driving.observation import VehiclePose
from td3_drive.driving.reward import COMPONENTS, RewardConfig, RewardFunction, RewardStep, StepEvents

DT = 0.05
#: eastbound straight route, 400 m, a waypoint every 2 m
ROUTE = np.stack([np.arange(0.0, 401.0, 2.0), np.zeros(201)], axis=1)

PoseAt = Callable[[int], VehiclePose]


def drive(pose_at: PoseAt, steps: int, config: RewardConfig | None = None,
          events_at: Callable[[int], StepEvents] | None = None, route: np.ndarray = ROUTE) -> list[RewardStep]:
    """Reset at pose_at(0), then step through pose_at(1..steps) until the episode ends."""
    reward = RewardFunction(config)
    reward.reset(pose_at(0), route)
    out = []
    for k in range(1, steps + 1):
        result = reward.step(pose_at(k), route, events_at(k) if events_at else StepEvents())
        out.append(result)
        if result.terminated or result.truncated:
            break
    return out


def along(speed: float, x0: float = 100.0, y: float = 0.0, yaw: float = 0.0) -> PoseAt:
    """Constant velocity along the x axis (speed signed: negative moves toward -x)."""
    direction = math.cos(yaw)
    return lambda k: VehiclePose(x0 + direction * speed * DT * k, y, yaw, speed)


def total(steps: list[RewardStep]) -> float:
    return sum(s.total for s in steps)


def test_driving_at_target_speed_beats_standing_still_and_backwards() -> None:
    forward = drive(along(8.0), 100)
    still = drive(along(0.0), 100)
    reversing = drive(along(-8.0), 100)  # facing east, rolling west
    wrong_way = drive(along(8.0, yaw=math.pi), 100)  # facing west, driving west
    assert len(forward) == len(still) == len(reversing) == len(wrong_way) == 100
    assert not any(s.terminated or s.truncated for s in forward + still + reversing + wrong_way)
    assert total(forward) > 40.0  # about +0.6 per step
    assert total(forward) > total(still) > total(reversing)
    assert total(still) > total(wrong_way)
    assert all(s.components["efficiency"] < 0 and s.components["progress"] < 0 for s in reversing)
    # standing still costs little: the stopped penalty is small and only starts after the grace period
    assert -0.05 * 100 <= total(still) <= 0.0


def test_too_fast_is_worse_than_target_speed() -> None:
    assert drive(along(8.0), 10)[-1].components["efficiency"] > drive(along(20.0), 10)[-1].components["efficiency"]


def test_stopped_penalty_only_after_grace_steps() -> None:
    config = RewardConfig(stopped_grace_steps=10, stopped_penalty=0.05)
    steps = drive(along(0.0), 15, config)
    stopped = [s.components["stopped"] for s in steps]
    assert stopped[:10] == [0.0] * 10
    assert stopped[10:] == [-0.05] * 5
    # moving resets the counter
    speeds = [0.0] * 11 + [1.0] + [0.0] * 3
    x = np.cumsum([v * DT for v in speeds])
    steps = drive(lambda k: VehiclePose(100.0 + x[k], 0.0, 0.0, speeds[k]), 14, config)
    assert [s.components["stopped"] for s in steps][10:] == [0.0] * 4


def test_lateral_offset_costs_and_off_route_terminates() -> None:
    centred = drive(along(8.0), 5)[-1]
    offset = drive(along(8.0, y=1.0), 5)[-1]
    assert offset.components["lane_keeping"] < centred.components["lane_keeping"] == 0.0
    drift = lambda k: VehiclePose(100.0 + 0.4 * k, -0.2 * k, 0.0, 8.0)  # drifts right 0.2 m per step
    steps = drive(drift, 50)
    last = steps[-1]
    assert last.terminated and not last.truncated and last.reason == "off_route"
    assert len(steps) == 13  # 13 * 0.2 = 2.6 m > 2.5 m
    assert last.components["offroad"] == -RewardConfig().offroad_penalty
    assert all(not s.terminated and s.reason == "" for s in steps[:-1])


def test_collision_terminates_with_penalty() -> None:
    steps = drive(along(8.0), 50, events_at=lambda k: StepEvents(collision=k == 7))
    assert len(steps) == 7
    assert steps[-1].terminated and not steps[-1].truncated and steps[-1].reason == "collision"
    assert steps[-1].components["collision"] == -RewardConfig().collision_penalty
    assert steps[-1].total < -5.0


def test_lane_invasion_penalised_but_not_terminal() -> None:
    steps = drive(along(8.0), 10, events_at=lambda k: StepEvents(lane_invasions=3 if k == 4 else 0))
    assert len(steps) == 10 and not any(s.terminated for s in steps)
    assert steps[3].components["lane_invasion"] == -RewardConfig().lane_invasion_penalty
    assert steps[4].components["lane_invasion"] == 0.0


def test_timeout_truncates_not_terminates() -> None:
    config = RewardConfig(max_episode_steps=20)
    steps = drive(along(8.0), 100, config)
    assert len(steps) == 20
    assert steps[-1].truncated and not steps[-1].terminated and steps[-1].reason == "timeout"
    assert not any(s.truncated for s in steps[:-1])
    # a terminal event on the last step is a termination, not a truncation
    steps = drive(along(8.0), 100, config, events_at=lambda k: StepEvents(collision=k == 20))
    assert steps[-1].terminated and not steps[-1].truncated and steps[-1].reason == "collision"


def test_route_completion_gives_goal_bonus() -> None:
    steps = drive(along(8.0, x0=390.0), 100)  # route ends at x = 400
    last = steps[-1]
    assert last.terminated and not last.truncated and last.reason == "route_completed"
    assert last.components["goal"] == RewardConfig().goal_bonus
    assert last.projection is not None and last.projection.remaining < 2.0
    assert len(steps) == 21  # 390 + 0.4 * 21 = 398.4 m: 1.6 m left
    assert sum(s.components["goal"] for s in steps[:-1]) == 0.0


def test_waypoint_bonus_once_per_waypoint() -> None:
    forward = drive(along(8.0), 50)  # 20 m with a waypoint every 2 m
    bonus = RewardConfig().waypoint_bonus
    assert sum(s.components["waypoint"] for s in forward) == pytest.approx(10 * bonus)
    # rocking back and forth over a waypoint earns it only once
    rocking = lambda k: VehiclePose(101.5 + (k % 2), 0.0, 0.0, 0.5)
    steps = drive(rocking, 20)
    assert sum(s.components["waypoint"] for s in steps) == pytest.approx(bonus)
    assert sum(s.components["progress"] for s in steps) == pytest.approx(0.0, abs=1e-9)


def test_progress_jump_is_clipped() -> None:
    teleport = lambda k: VehiclePose(100.0 if k == 0 else 300.0, 0.0, 0.0, 8.0)
    step = drive(teleport, 1)[0]
    config = RewardConfig()
    assert step.components["progress"] == pytest.approx(config.w_progress * config.max_progress_speed * DT)


def test_jerk_is_penalised() -> None:
    # smooth: constant acceleration 2 m/s^2; jerky: acceleration flips between +4 and -4 m/s^2
    smooth_v = [2.0 + 2.0 * DT * k for k in range(40)]
    jerky_v = [2.0 + (0.2 if k % 2 else 0.0) for k in range(40)]

    def trajectory(speeds: list[float]) -> PoseAt:
        x = 100.0 + np.cumsum(np.array(speeds) * DT)
        return lambda k: VehiclePose(float(x[k]), 0.0, 0.0, speeds[k])

    smooth = drive(trajectory(smooth_v), 39)
    jerky = drive(trajectory(jerky_v), 39)
    assert smooth[0].components["comfort"] == 0.0  # no acceleration history yet
    assert sum(s.components["comfort"] for s in smooth) == pytest.approx(0.0, abs=1e-6)
    assert sum(s.components["comfort"] for s in jerky) < -0.03 * 38
    # steering zig-zag (yaw rate flipping) is lateral jerk
    zigzag = lambda k: VehiclePose(100.0 + 0.4 * k, 0.0, 0.05 * (k % 2), 8.0)
    assert all(s.components["comfort"] < -0.01 for s in drive(zigzag, 20)[1:])


def test_components_bounded_and_finite_on_random_trajectories() -> None:
    rng = np.random.default_rng(1)
    config = RewardConfig()
    for _ in range(20):
        pose = VehiclePose(100.0, 0.0, 0.0, 0.0)
        reward = RewardFunction(config)
        reward.reset(pose, ROUTE)
        for _ in range(60):
            pose = VehiclePose(pose.x + rng.uniform(-1.5, 1.5), pose.y + rng.uniform(-0.3, 0.3),
                               pose.yaw + rng.uniform(-1, 1), rng.uniform(-40, 40))
            result = reward.step(pose, ROUTE, StepEvents(lane_invasions=int(rng.integers(0, 2))))
            assert set(result.components) == set(COMPONENTS)
            assert all(math.isfinite(v) for v in result.components.values())
            assert result.total == pytest.approx(sum(result.components.values()))
            c = result.components
            assert abs(c["efficiency"]) <= config.w_efficiency
            assert -config.w_lateral <= c["lane_keeping"] <= 0.0
            heading_error = result.projection.heading_error
            assert c["heading"] == pytest.approx(-config.w_heading * abs(heading_error) / math.pi)
            assert -config.w_heading <= c["heading"] <= 0.0
            assert -config.w_comfort <= c["comfort"] <= 0.0
            assert abs(c["progress"]) <= config.w_progress * config.max_progress_speed * config.dt + 1e-12
            assert 0.0 <= c["waypoint"] <= config.waypoint_bonus  # waypoints 2 m apart, at most 1 m per step
            if result.terminated:
                break
            assert -1.75 <= result.total <= 1.0  # shaped terms only: roughly [-1, 1]


def test_step_before_reset_raises() -> None:
    with pytest.raises(RuntimeError):
        RewardFunction().step(VehiclePose(0, 0, 0, 0), ROUTE)


def test_one_terminal_event_per_step_the_most_severe() -> None:
    """A collision while off the route (and past the goal) ends the episode once, as a collision:
    one penalty, not two, and the goal bonus never pays for a crash."""
    cfg = RewardConfig()
    steps = drive(lambda k: VehiclePose(100.0 + 0.4 * k, 3.0 if k == 5 else 0.0, 0.0, 8.0), 100,
                  events_at=lambda k: StepEvents(collision=k == 5))
    last = steps[-1]
    assert len(steps) == 5 and last.terminated and last.reason == "collision"
    assert last.components["collision"] == -cfg.collision_penalty and last.components["offroad"] == 0.0
    steps = drive(lambda k: VehiclePose(396.0 + 0.4 * k, 3.0, 0.0, 8.0), 100)  # off the route at the goal
    assert steps[0].reason == "off_route" and steps[0].components["goal"] == 0.0


def test_every_shaped_component_matches_its_formula() -> None:
    """An independent oracle on the straight eastbound route (s = x, lateral = y, heading error =
    yaw): each component recomputed from the poses alone, on random trajectories that start near
    the route's first waypoint, turn, stop and cross lane markings one or several times."""
    rng = np.random.default_rng(7)
    cfg = RewardConfig()
    max_ds = cfg.max_progress_speed * cfg.dt
    for _ in range(10):
        pose = VehiclePose(float(rng.uniform(0.2, 1.8)), 0.0, 0.0, 0.0)
        reward = RewardFunction(cfg)
        reward.reset(pose, ROUTE)
        prev, prev_accel, farthest, stopped = pose, None, pose.x, 0
        for _ in range(60):
            pose = VehiclePose(prev.x + rng.uniform(-0.3, 1.2), float(rng.uniform(-2.4, 2.4)),
                               float(rng.uniform(-1.0, 1.0)), float(rng.choice([0.0, 0.1, rng.uniform(-5, 25)])))
            invasions = int(rng.integers(0, 3))
            c = reward.step(pose, ROUTE, StepEvents(lane_invasions=invasions)).components
            v_forward = pose.speed * math.cos(pose.yaw)
            assert c["efficiency"] == pytest.approx(
                cfg.w_efficiency * float(np.clip(1 - abs(v_forward - cfg.target_speed) / cfg.target_speed, -1, 1)))
            assert c["lane_keeping"] == pytest.approx(-cfg.w_lateral * min(abs(pose.y) / cfg.max_lateral_deviation, 1))
            accel = ((pose.speed - prev.speed) / DT, pose.speed * (pose.yaw - prev.yaw) / DT)
            jerk = None if prev_accel is None else math.dist(accel, prev_accel) / DT
            assert c["comfort"] == pytest.approx(0.0 if jerk is None else -cfg.w_comfort * math.tanh(jerk / cfg.jerk_scale))
            ds = float(np.clip(pose.x - prev.x, -max_ds, max_ds))
            assert c["progress"] == pytest.approx(cfg.w_progress * ds)
            reached = max(farthest, prev.x + ds)
            waypoints = sum(farthest < s <= reached for s in ROUTE[:, 0])
            assert c["waypoint"] == pytest.approx(cfg.waypoint_bonus * waypoints)
            assert c["lane_invasion"] == (-cfg.lane_invasion_penalty if invasions else 0.0)
            stopped = stopped + 1 if abs(pose.speed) < cfg.stopped_speed else 0
            assert c["stopped"] == (-cfg.stopped_penalty if stopped > cfg.stopped_grace_steps else 0.0)
            prev, prev_accel, farthest = pose, accel, reached


def test_boundaries_of_stopped_and_off_route() -> None:
    cfg = RewardConfig()
    # exactly stopped_speed is moving; one moving step restarts the grace period from zero
    speeds = [0.0] * 10 + [cfg.stopped_speed] + [0.0] * (cfg.stopped_grace_steps + 1)
    steps = drive(lambda k: VehiclePose(100.0, 0.0, 0.0, speeds[k - 1] if k else 0.0), len(speeds))
    penalised = [k for k, s in enumerate(steps, start=1) if s.components["stopped"]]
    assert penalised == [len(speeds)]
    # on the corridor's edge is still on the route
    edge = drive(lambda k: VehiclePose(100.0 + 0.4 * k, cfg.max_lateral_deviation if k else 0.0, 0.0, 8.0), 3)
    assert len(edge) == 3 and not any(s.terminated for s in edge)


def test_non_finite_pose_is_refused_with_its_reason() -> None:
    from td3_drive.driving.observation import InvalidMessage

    reward = RewardFunction()
    for bad in (VehiclePose(float("nan"), 0, 0, 0), VehiclePose(0, 0, 0, float("inf"))):
        with pytest.raises(InvalidMessage) as raised:
            reward.reset(bad, ROUTE)
        assert raised.value.reason == "non_finite"


def test_resync_measures_the_next_step_from_where_the_car_is() -> None:
    """Lost steps: progress is not paid for the gap, the time limit still counts it, and each
    waypoint is paid once: those reached in the gap with the next step, none twice."""
    cfg = RewardConfig(max_episode_steps=10)
    reward = RewardFunction(cfg)
    reward.reset(VehiclePose(100.0, 0.0, 0.0, 8.0), ROUTE)
    first = reward.step(VehiclePose(104.0, 0.0, 0.0, 8.0), ROUTE)  # progress clipped to 1 m: reached 101
    assert first.components["waypoint"] == 0.0
    reward.resync(VehiclePose(110.0, 0.0, 0.0, 8.0), ROUTE, lost_steps=3)
    assert reward.steps == 4
    step = reward.step(VehiclePose(110.4, 0.0, 0.0, 8.0), ROUTE)
    assert step.components["progress"] == pytest.approx(cfg.w_progress * 0.4)
    assert step.components["comfort"] == 0.0  # no acceleration history across the gap
    assert step.components["waypoint"] == pytest.approx(cfg.waypoint_bonus * 5)  # 102 ... 110
    again = reward.step(VehiclePose(110.8, 0.0, 0.0, 8.0), ROUTE)
    assert again.components["waypoint"] == 0.0
    reward.resync(VehiclePose(111.0, 0.0, 0.0, 8.0), ROUTE)
    assert reward.steps == 7  # one lost step by default
    with pytest.raises(Exception):
        reward.resync(VehiclePose(float("nan"), 0.0, 0.0, 0.0), ROUTE)
