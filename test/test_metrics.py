"""Known-answer tests for td3_drive.driving.metrics."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from td3_drive.driving.metrics import (
    EpisodeMetrics,
    EpisodeMetricsRecorder,
    max_lateral_acceleration,
    rms_longitudinal_jerk,
    summarize,
)
from td3_drive.driving.observation import InvalidMessage, VehiclePose

DT = 0.05


def straight(length: float, spacing: float = 2.0) -> np.ndarray:
    x = np.arange(0.0, length + spacing / 2, spacing)
    return np.stack([x, np.zeros_like(x)], axis=1)


def drive_straight(route_length: float, speed: float, y: float = 0.0, seconds: float | None = None,
                   collision_at: set[int] | None = None, invasions_at: dict[int, int] | None = None,
                   x0: float = 0.0) -> EpisodeMetrics:
    """Constant speed along +x at lateral y; stops at the route end unless ``seconds`` is given."""
    rec = EpisodeMetricsRecorder()
    rec.reset(straight(route_length))
    steps = int(round((seconds if seconds is not None else (route_length - x0) / speed) / DT))
    for k in range(steps + 1):
        rec.record(k * DT, VehiclePose(x0 + speed * k * DT, y, 0.0, speed),
                   k in (collision_at or set()), (invasions_at or {}).get(k, 0))
    return rec.finish("test")


def test_circle_at_constant_speed_gives_v2_over_r() -> None:
    radius, v = 25.0, 8.0
    route_theta = np.linspace(0.0, 2 * math.pi, 400)
    rec = EpisodeMetricsRecorder()
    rec.reset(np.stack([radius * np.sin(route_theta), radius - radius * np.cos(route_theta)], axis=1))
    omega = v / radius
    for k in range(200):
        th = omega * k * DT  # counter-clockwise, yaw = th, crossing +-pi on the way
        rec.record(k * DT, VehiclePose(radius * math.sin(th), radius - radius * math.cos(th), th, v), False, 0)
    m = rec.finish("timeout")
    assert m.max_lateral_acceleration == pytest.approx(v * v / radius, rel=0.01)
    assert m.rms_longitudinal_jerk == pytest.approx(0.0, abs=1e-9)
    assert m.mean_speed == pytest.approx(v, rel=0.01)  # chords are a hair shorter than the arc
    assert m.rms_lateral_deviation < 0.05


def test_jerk_of_an_acceleration_ramp_on_uneven_sampling() -> None:
    jerk = 2.0  # a(t) = jerk * t, v = jerk * t^2 / 2
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.uniform(0.03, 0.07, size=100))
    assert rms_longitudinal_jerk(t, 0.5 * jerk * t ** 2) == pytest.approx(jerk, rel=1e-9)


def test_jerk_of_a_sinusoidal_speed() -> None:
    # v = A sin(w t): jerk = -A w^2 sin(w t), RMS over whole periods = A w^2 / sqrt(2)
    amp, w = 1.5, 2 * math.pi / 4.0
    t = np.arange(0.0, 40.0 + DT / 2, DT)
    expected = amp * w * w / math.sqrt(2)
    assert rms_longitudinal_jerk(t, 3.0 + amp * np.sin(w * t)) == pytest.approx(expected, rel=0.01)


def test_jerk_and_lateral_acceleration_undefined_on_too_few_samples() -> None:
    assert math.isnan(rms_longitudinal_jerk(np.array([0.0, 0.1]), np.array([1.0, 2.0])))
    assert math.isnan(max_lateral_acceleration(np.array([0.0]), np.array([1.0]), np.array([0.0])))


def test_straight_drive_offset_left_is_signed_positive() -> None:
    m = drive_straight(100.0, 8.0, y=0.5)
    assert m.rms_lateral_deviation == pytest.approx(0.5)
    assert m.max_abs_lateral_deviation == pytest.approx(0.5)
    assert m.max_lateral_deviation_signed == pytest.approx(0.5)
    right = drive_straight(100.0, 8.0, y=-1.2)
    assert right.max_lateral_deviation_signed == pytest.approx(-1.2)
    assert right.max_abs_lateral_deviation == pytest.approx(1.2)


def test_completed_clean_drive_is_a_success() -> None:
    m = drive_straight(100.0, 10.0)
    assert m.completed and m.success and not m.off_route
    assert m.route_completion == 1.0
    assert m.distance_m == pytest.approx(100.0)
    assert m.mean_speed == pytest.approx(10.0)
    # remaining < goal_distance (2 m) first at x = 98.5 (ticks every 0.5 m)
    assert m.time_to_complete == pytest.approx(9.85)
    assert m.collisions == 0 and m.collisions_per_km == 0.0
    assert m.steps == 201 and m.end_reason == "test"


def test_partial_drive_is_not_completed() -> None:
    m = drive_straight(100.0, 10.0, seconds=4.0)
    assert not m.completed and not m.success
    assert m.route_completion == pytest.approx(0.4)
    assert math.isnan(m.time_to_complete)


def test_collision_or_leaving_the_route_is_not_a_success() -> None:
    crashed = drive_straight(100.0, 10.0, collision_at={50})
    assert crashed.completed and not crashed.success and crashed.collisions == 1
    wide = drive_straight(100.0, 10.0, y=2.6)  # beyond the 2.5 m corridor the reward uses
    assert wide.completed and wide.off_route and not wide.success


def test_collisions_per_km() -> None:
    m = drive_straight(500.0, 10.0, collision_at={100, 101, 102})  # one contact over three ticks
    assert m.collisions == 1
    assert m.distance_m == pytest.approx(500.0)
    assert m.collisions_per_km == pytest.approx(2.0)
    inv = drive_straight(500.0, 10.0, invasions_at={10: 2, 300: 1})
    assert inv.lane_invasions == 3 and inv.lane_invasions_per_km == pytest.approx(6.0)


def test_rates_without_distance_are_nan_not_division_by_zero() -> None:
    m = drive_straight(100.0, 0.0, seconds=1.0, collision_at={3})
    assert m.distance_m == 0.0 and m.collisions == 1
    assert math.isnan(m.collisions_per_km) and math.isnan(m.lane_invasions_per_km)
    assert m.mean_speed == 0.0 and m.route_completion == 0.0
    empty = EpisodeMetricsRecorder()
    empty.reset(straight(10.0))
    e = empty.finish("collision")
    assert e.steps == 0 and not e.success and math.isnan(e.mean_speed) and math.isnan(e.collisions_per_km)


def test_recorder_rejects_bad_input() -> None:
    rec = EpisodeMetricsRecorder()
    with pytest.raises(RuntimeError):
        rec.record(0.0, VehiclePose(0, 0, 0, 0), False, 0)
    with pytest.raises(InvalidMessage):
        rec.reset(np.zeros((3, 2)))
    rec.reset(straight(10.0))
    rec.record(0.0, VehiclePose(0, 0, 0, 0), False, 0)
    with pytest.raises(ValueError):
        rec.record(0.0, VehiclePose(0, 0, 0, 0), False, 0)  # time must increase
    with pytest.raises(ValueError):
        rec.record(0.1, VehiclePose(float("nan"), 0, 0, 0), False, 0)


def test_summarize_and_to_dict() -> None:
    episodes = [drive_straight(100.0, 10.0), drive_straight(100.0, 10.0, collision_at={5}),
                drive_straight(100.0, 5.0, seconds=4.0), drive_straight(100.0, 0.0, seconds=1.0)]
    s = summarize(episodes)
    assert s["n"] == 4 and s["successes"] == 1 and s["success_rate"] == 0.25
    lo, hi = s["success_rate_ci95"]
    assert 0.0 < lo < 0.25 < hi < 1.0
    assert s["end_reasons"] == {"test": 4}
    # per-km: NaN for the standing episode is skipped, n says so
    cpk = s["metrics"]["collisions_per_km"]
    assert cpk["n"] == 3 and cpk["max"] == pytest.approx(10.0) and cpk["min"] == 0.0
    assert s["collisions_per_km_pooled"] == pytest.approx(1 / 0.22)
    speed = s["metrics"]["mean_speed"]
    assert speed["mean"] == pytest.approx(6.25) and speed["std"] == pytest.approx(np.std([10, 10, 5, 0], ddof=1))
    d = episodes[0].to_dict()
    assert set(d) == {f for f in EpisodeMetrics.__dataclass_fields__}
    json.dumps(d)
    with pytest.raises(ValueError):
        summarize([])
