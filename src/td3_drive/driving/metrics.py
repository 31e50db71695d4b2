"""Driving metrics per episode, from what the bridge topics give.

Inputs are only the odometry pose (with its sample time), the route (nav_msgs/Path),
and the collision / lane-invasion events, so the metrics are computed the same way
in CARLA and in the embedded simulator, for TD3 and for the classical baseline.
Route geometry is ``observation.project_on_route`` (one implementation for the
observation, the reward and the metrics).  Definitions: docs/metrics.md.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np

from td3_drive.driving.observation import InvalidMessage, VehiclePose, project_on_route, wrap_angle
from td3_drive.driving.reward import RewardConfig

__all__ = ["EpisodeMetrics", "EpisodeMetricsRecorder", "summarize", "summarize_by", "MIN_DISTANCE_FOR_RATE_M",
           "route_length"]

#: m; below this driven distance a per-km rate is undefined (NaN) rather than a huge number
MIN_DISTANCE_FOR_RATE_M = 1.0

#: metrics from the simulator's ground truth (NaN where it is not published, e.g. in CARLA)
_GROUND_TRUTH = ("min_time_headway_s", "min_ttc_s")

# defaults shared with the reward, so "off_route" and "completed" mean the same thing in both
_REWARD = RewardConfig()


@dataclass
class EpisodeMetrics:
    """One episode's driving metrics (SI units; NaN where a value is undefined)."""

    #: route completed with no collision and never off the route corridor
    success: bool
    #: remaining route < goal_distance at some tick
    completed: bool
    #: |lateral deviation| > max_lateral_deviation at some tick
    off_route: bool
    #: max arc length reached / route length in [0, 1]; 1.0 once completed
    route_completion: float
    #: m driven (sum of odometry position increments)
    distance_m: float
    #: collision onsets (a contact spanning consecutive ticks counts once)
    collisions: int
    #: collisions / km driven; NaN if distance_m < MIN_DISTANCE_FOR_RATE_M
    collisions_per_km: float
    #: lane-invasion events
    lane_invasions: int
    #: lane invasions / km driven; NaN if distance_m < MIN_DISTANCE_FOR_RATE_M
    lane_invasions_per_km: float
    #: m/s, distance_m / duration_s (stops included); NaN if duration is 0
    mean_speed: float
    #: m, RMS of the signed lateral deviation over the ticks
    rms_lateral_deviation: float
    #: m, largest |lateral deviation|
    max_abs_lateral_deviation: float
    #: m, the signed lateral deviation whose magnitude is largest (+ = left of the route)
    max_lateral_deviation_signed: float
    #: m/s^3, RMS of d^2 v / dt^2 (finite differences on the sample times); NaN with < 3 ticks
    rms_longitudinal_jerk: float
    #: m/s^2, max |v * yaw_rate| (yaw rate from consecutive odometry yaws); NaN with < 2 ticks
    max_lateral_acceleration: float
    #: s from the first tick to the tick the route was completed; NaN if not completed
    time_to_complete: float
    #: s from the first to the last tick
    duration_s: float
    #: ticks recorded
    steps: int
    #: why the episode ended, as given to finish() (collision, off_route, route_completed, timeout, ...)
    end_reason: str
    #: s, min over ticks of gap / speed to the car ahead (ground truth, embedded simulator only); NaN if none
    min_time_headway_s: float = math.nan
    #: s, min over closing ticks of gap / closing speed (ground truth, embedded simulator only); NaN if never closing
    min_ttc_s: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (Python scalars), e.g. for JSON or CSV."""
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "EpisodeMetrics":
        """Back from :meth:`to_dict` (extra keys such as ``agent`` or ``return`` are ignored; fields with a
        default may be missing, as in rows written before they existed)."""
        given = {name: row[name] for name, f in cls.__dataclass_fields__.items()
                 if name in row or f.default is MISSING}
        return cls(**{k: (math.nan if v is None and k in _GROUND_TRUTH else v) for k, v in given.items()})


def route_length(route: np.ndarray) -> float:
    """Length (m) of an (N, 2) polyline."""
    route = np.asarray(route, dtype=np.float64)
    return float(np.hypot(*np.diff(route, axis=0).T).sum())


def _per_km(count: int, distance_m: float) -> float:
    # a collision while standing still has no meaningful per-km rate: NaN, not inf or 1000/km
    return count / (distance_m / 1000.0) if distance_m >= MIN_DISTANCE_FOR_RATE_M else math.nan


class EpisodeMetricsRecorder:
    """Accumulates one episode tick by tick: ``reset(route)``, ``record(...)`` per tick, ``finish(reason)``.

    ``max_lateral_deviation`` and ``goal_distance`` default to the reward's termination
    thresholds (RewardConfig), so a metric "off_route" is the reward's "off_route".
    """

    def __init__(self, max_lateral_deviation: float = _REWARD.max_lateral_deviation,
                 goal_distance: float = _REWARD.goal_distance) -> None:
        self.max_lateral_deviation = float(max_lateral_deviation)
        self.goal_distance = float(goal_distance)
        self._route: np.ndarray | None = None

    def reset(self, route: np.ndarray) -> None:
        """Start an episode on ``route`` ((N, 2) world x, y).  Raises InvalidMessage for an unusable route."""
        route = _validated(np.asarray(route, dtype=np.float64))
        self._route, self._route_length = route, route_length(route)
        self._t: list[float] = []
        self._xy: list[tuple[float, float]] = []
        self._yaw: list[float] = []
        self._v: list[float] = []
        self._lat: list[float] = []
        self._max_s = 0.0
        self._completed_at: float | None = None
        self._off_route = False
        self._collisions = 0
        self._in_collision = False
        self._lane_invasions = 0
        self._min_headway = math.inf
        self._min_ttc = math.inf

    def record(self, time_s: float, pose: VehiclePose, collision: bool, lane_invasions: int,
               lead: tuple[float, float] | None = None) -> None:
        """One tick: the pose at ``time_s`` and the events received since the previous tick; ``lead``
        (gap [m], speed [m/s]) of the car ahead where the simulator tells it (ground truth).

        Raises ValueError for a non-finite pose or a time that does not increase.
        """
        if self._route is None:
            raise RuntimeError("EpisodeMetricsRecorder.record before reset")
        values = (time_s, pose.x, pose.y, pose.yaw, pose.speed)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"non-finite sample: t={time_s} pose={pose}")
        if self._t and time_s <= self._t[-1]:
            # finite differences need strictly increasing times; a repeated tick is a caller bug
            raise ValueError(f"time {time_s} does not increase (last {self._t[-1]})")
        if lane_invasions < 0:
            raise ValueError("lane_invasions must be >= 0")
        proj = project_on_route(pose, self._route)
        self._t.append(float(time_s))
        self._xy.append((pose.x, pose.y))
        self._yaw.append(pose.yaw)
        self._v.append(pose.speed)
        self._lat.append(proj.lateral)
        self._max_s = max(self._max_s, proj.s_along)
        if proj.remaining < self.goal_distance and self._completed_at is None:
            self._completed_at = float(time_s)
        if abs(proj.lateral) > self.max_lateral_deviation:
            self._off_route = True
        if collision and not self._in_collision:
            self._collisions += 1  # CARLA sends an event per physics contact: count onsets
        self._in_collision = bool(collision)
        self._lane_invasions += int(lane_invasions)
        if lead is not None and math.isfinite(lead[0]):
            gap, closing = max(lead[0], 0.0), pose.speed - lead[1]
            if pose.speed > 0.1:
                self._min_headway = min(self._min_headway, gap / pose.speed)
            if closing > 0.1:
                self._min_ttc = min(self._min_ttc, gap / closing)

    def finish(self, reason: str) -> EpisodeMetrics:
        """The episode's metrics; ``reason`` is stored as ``end_reason`` (success is computed, not taken from it)."""
        if self._route is None:
            raise RuntimeError("EpisodeMetricsRecorder.finish before reset")
        t = np.asarray(self._t)
        v = np.asarray(self._v)
        lat = np.asarray(self._lat)
        xy = np.asarray(self._xy).reshape(-1, 2)
        distance = float(np.hypot(*np.diff(xy, axis=0).T).sum()) if len(xy) > 1 else 0.0
        duration = float(t[-1] - t[0]) if len(t) else 0.0
        completed = self._completed_at is not None
        if len(lat):
            i_max = int(np.argmax(np.abs(lat)))
            rms_lat, max_abs_lat, max_signed = (float(np.sqrt(np.mean(lat ** 2))), float(abs(lat[i_max])),
                                                float(lat[i_max]))
        else:
            rms_lat = max_abs_lat = max_signed = math.nan
        return EpisodeMetrics(
            success=completed and self._collisions == 0 and not self._off_route,
            completed=completed,
            off_route=self._off_route,
            route_completion=1.0 if completed else min(max(self._max_s / self._route_length, 0.0), 1.0),
            distance_m=distance,
            collisions=self._collisions,
            collisions_per_km=_per_km(self._collisions, distance),
            lane_invasions=self._lane_invasions,
            lane_invasions_per_km=_per_km(self._lane_invasions, distance),
            mean_speed=distance / duration if duration > 0 else math.nan,
            rms_lateral_deviation=rms_lat,
            max_abs_lateral_deviation=max_abs_lat,
            max_lateral_deviation_signed=max_signed,
            rms_longitudinal_jerk=rms_longitudinal_jerk(t, v),
            max_lateral_acceleration=max_lateral_acceleration(t, v, np.asarray(self._yaw)),
            time_to_complete=self._completed_at - float(t[0]) if completed else math.nan,
            duration_s=duration,
            steps=len(t),
            end_reason=str(reason),
            min_time_headway_s=self._min_headway if math.isfinite(self._min_headway) else math.nan,
            min_ttc_s=self._min_ttc if math.isfinite(self._min_ttc) else math.nan,
        )


def _validated(route: np.ndarray) -> np.ndarray:
    """(N, 2), finite, positive length; raises InvalidMessage like route_from_path."""
    if route.ndim != 2 or route.shape[1] != 2 or len(route) < 2:
        raise InvalidMessage("degenerate_route", f"route shape {route.shape}, need (N>=2, 2)")
    if not np.isfinite(route).all():
        raise InvalidMessage("non_finite", "route has NaN/Inf")
    if route_length(route) <= 0.0:
        raise InvalidMessage("degenerate_route", "all route points coincide")
    return route


def rms_longitudinal_jerk(t: np.ndarray, v: np.ndarray) -> float:
    """RMS of the second divided difference of speed on (possibly uneven) sample times.

    a is (v[i+1] - v[i]) / (t[i+1] - t[i]) at the midpoint of each interval, jerk the same
    difference of a over the midpoints: exact for a speed that is quadratic in time.
    NaN with fewer than 3 samples.
    """
    t, v = np.asarray(t, dtype=np.float64), np.asarray(v, dtype=np.float64)
    if len(t) < 3:
        return math.nan
    accel = np.diff(v) / np.diff(t)
    t_mid = 0.5 * (t[1:] + t[:-1])
    jerk = np.diff(accel) / np.diff(t_mid)
    return float(np.sqrt(np.mean(jerk ** 2)))


def max_lateral_acceleration(t: np.ndarray, v: np.ndarray, yaw: np.ndarray) -> float:
    """max |v * yaw_rate| over the sample intervals (v: mean of the interval's two speeds).

    Steady-state (no sideslip rate) lateral acceleration, the same estimate as the reward's
    comfort term.  Exact v^2 / R on a circle at constant speed.  NaN with fewer than 2 samples.
    """
    t, v, yaw = (np.asarray(a, dtype=np.float64) for a in (t, v, yaw))
    if len(t) < 2:
        return math.nan
    dyaw = np.array([wrap_angle(d) for d in np.diff(yaw)])  # across +-pi without a 2*pi spike
    a_lat = 0.5 * (v[1:] + v[:-1]) * dyaw / np.diff(t)
    return float(np.max(np.abs(a_lat)))


#: EpisodeMetrics fields summarised as rates (booleans) or counts, not mean/std/min/max
_FLAGS = ("success", "completed", "off_route")
_NON_NUMERIC = ("end_reason",)


def _wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sane at k = 0 or n with few runs)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(centre - half, 0.0), min(centre + half, 1.0)


def summarize_by(episodes: Sequence[EpisodeMetrics], labels: Sequence[str]) -> dict[str, dict[str, Any]]:
    """:func:`summarize` per label (e.g. each episode's hazard), and over every label but ``none`` as ``hazard``.

    Empty when no label is given (rows of a run without hazard labels).
    """
    if len(episodes) != len(labels):
        raise ValueError(f"{len(episodes)} episodes but {len(labels)} labels")
    groups: dict[str, list[EpisodeMetrics]] = {}
    for episode, label in zip(episodes, labels):
        if label:
            groups.setdefault(label, []).append(episode)
            if label != "none":
                groups.setdefault("hazard", []).append(episode)
    return {label: summarize(group) for label, group in groups.items()}


def summarize(episodes: Sequence[EpisodeMetrics]) -> dict[str, Any]:
    """Aggregate over episodes.

    Returns ``{"n", "successes", "success_rate", "success_rate_ci95", "completed_rate",
    "off_route_rate", "collisions_per_km_pooled", "lane_invasions_per_km_pooled",
    "end_reasons": {reason: count}, "metrics": {name: {"mean", "std", "min", "max", "n"}}}``.
    Per-metric statistics skip NaN values (``n`` says how many were defined); ``std`` is the
    sample standard deviation (ddof=1), NaN with fewer than 2 values.  Pooled rates are
    total events / total km over all episodes (NaN if < MIN_DISTANCE_FOR_RATE_M in total).
    """
    if not episodes:
        raise ValueError("summarize needs at least one episode")
    n = len(episodes)
    successes = sum(bool(e.success) for e in episodes)
    total_m = float(sum(e.distance_m for e in episodes))
    reasons: dict[str, int] = {}
    for e in episodes:
        reasons[e.end_reason] = reasons.get(e.end_reason, 0) + 1
    stats: dict[str, dict[str, float]] = {}
    for f in fields(EpisodeMetrics):
        if f.name in _FLAGS or f.name in _NON_NUMERIC:
            continue
        values = np.array([float(getattr(e, f.name)) for e in episodes])
        values = values[np.isfinite(values)]
        m = len(values)
        stats[f.name] = {
            "mean": float(values.mean()) if m else math.nan,
            "std": float(values.std(ddof=1)) if m > 1 else math.nan,
            "min": float(values.min()) if m else math.nan,
            "max": float(values.max()) if m else math.nan,
            "n": m,
        }
    return {
        "n": n,
        "successes": successes,
        "success_rate": successes / n,
        "success_rate_ci95": _wilson_interval(successes, n),
        "completed_rate": sum(bool(e.completed) for e in episodes) / n,
        "off_route_rate": sum(bool(e.off_route) for e in episodes) / n,
        "collisions_per_km_pooled": _per_km(sum(e.collisions for e in episodes), total_m),
        "lane_invasions_per_km_pooled": _per_km(sum(e.lane_invasions for e in episodes), total_m),
        "end_reasons": reasons,
        "metrics": stats,
    }
