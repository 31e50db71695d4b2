"""Hazards: scripted cars in the ego's lane that only a driver who looks can avoid.

The 53-d kinematic state (speed, lateral deviation, heading error, route waypoints) says
nothing about other vehicles, so a hazard can only be seen in the camera image.  Each
episode's hazard is a pure function of its seed (:func:`plan_hazard`): which kind, where
it starts along the ego's route and how it behaves, so every agent meets the same hazards
on the same evaluation seeds.

Kinds (positions and gaps are measured along the ego's route, bumper to bumper):

* ``brake_hold``: a lead cruising at 5.5-7 m/s brakes at 4-7 m/s^2 to a stop once the ego
  closes in (gap below 8-15 m) or after driving 30-90 m, and stays stopped until the ego has
  waited (stood still) for 1-10 s, then drives on.
* ``slow_lead``: a lead at 4-5.5 m/s, below the 8 m/s target speed.
* ``cut_in``: a car at 4-6 m/s in the adjacent lane changes into the ego's lane when the gap
  falls to 6-12 m (or after 25 s, when it becomes a slow lead).

highway-env gives the vehicles (IDM longitudinal control and lane keeping); the script here
only decides when a lead brakes, holds, or changes lanes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NONE = "none"
KINDS = ("brake_hold", "slow_lead", "cut_in")

# Weyl sequences (golden-ratio steps) over consecutive seeds: the share of hazard episodes in any
# run of consecutive seeds (an evaluation protocol, a training run) is within one episode of
# hazard_share, and the kinds take turns, where independent coin flips would leave 7 or 13 of 20
_HAZARD_STEP = 0.6180339887498949
_KIND_STEP = 0.7548776662466927  # the plastic ratio's inverse: independent of the first sequence

#: the hazard car stays stopped for at most this long, whatever the ego does
MAX_HOLD_S = 30.0
#: the ego "waits" while slower than this
WAIT_SPEED = 0.5
#: a cut-in that was never triggered by the gap happens after this long
CUT_IN_TIMEOUT_S = 25.0


@dataclass(frozen=True)
class HazardPlan:
    """One episode's hazard, drawn from its seed."""

    kind: str = NONE
    start_gap_m: float = 0.0  # along the route, ego front to hazard car rear, at the episode start
    speed: float = 0.0  # cruise speed [m/s]
    brake_decel: float = 0.0  # brake_hold [m/s^2]
    trigger_gap_m: float = 0.0  # brake_hold: brake below this gap; cut_in: change lanes at this gap
    trigger_distance_m: float = 0.0  # brake_hold: brake after the lead drove this far
    wait_s: float = 0.0  # brake_hold: stopped until the ego has waited this long


def parse_kinds(kinds: str) -> tuple[str, ...]:
    """``"brake_hold,cut_in"`` -> ('brake_hold', 'cut_in'); raises ValueError for an unknown kind."""
    names = tuple(k.strip() for k in kinds.split(",") if k.strip())
    unknown = [k for k in names if k not in KINDS]
    if unknown or not names:
        raise ValueError(f"hazards must name some of {KINDS}, got {kinds!r}")
    return names


def check_share(share: float) -> float:
    """``share`` if it is a valid hazard_share; raises ValueError otherwise."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"hazard_share must be in [0, 1], got {share}")
    return share


def hazard_kind(seed: int, share: float, kinds: tuple[str, ...]) -> str:
    """The hazard kind of the episode on ``seed`` (``none`` for a clean episode)."""
    u = (int(seed) * _HAZARD_STEP) % 1.0
    if u >= check_share(share):
        return NONE
    return kinds[int(((int(seed) * _KIND_STEP) % 1.0) * len(kinds))]


def plan_hazard(seed: int, share: float, kinds: tuple[str, ...]) -> HazardPlan:
    """The whole hazard of the episode on ``seed``: kind, placement and behaviour."""
    kind = hazard_kind(seed, share, kinds)
    if kind == NONE:
        return HazardPlan()
    rng = np.random.default_rng([int(seed), 3])
    u = rng.uniform
    if kind == "brake_hold":
        return HazardPlan(kind, start_gap_m=u(20.0, 35.0), speed=u(5.5, 7.0), brake_decel=u(4.0, 7.0),
                          trigger_gap_m=u(8.0, 15.0), trigger_distance_m=u(30.0, 90.0), wait_s=u(1.0, 10.0))
    if kind == "slow_lead":
        return HazardPlan(kind, start_gap_m=u(20.0, 40.0), speed=u(4.0, 5.5))
    return HazardPlan(kind, start_gap_m=u(25.0, 40.0), speed=u(4.0, 6.0), trigger_gap_m=u(6.0, 12.0))


class HazardScript:
    """What the hazard car does next, tick by tick: cruise, brake, hold, go, or change lanes.

    ``update`` is told the gap to the ego and the ego's speed, and returns the acceleration to
    force on the car (None: its own IDM drives it) and whether it should now change lanes.
    """

    def __init__(self, plan: HazardPlan) -> None:
        self.plan = plan
        self.phase = "cruise"  # cruise -> brake -> hold -> go (brake_hold); cruise -> cut (cut_in)
        self.driven_m = 0.0
        self.held_s = 0.0
        self.ego_waited_s = 0.0
        self.time_s = 0.0

    def update(self, dt: float, gap_m: float, ego_speed: float, car_speed: float) -> tuple[float | None, bool]:
        p = self.plan
        self.time_s += dt
        self.driven_m += max(car_speed, 0.0) * dt
        if p.kind == "brake_hold":
            if self.phase == "cruise" and (gap_m < p.trigger_gap_m or self.driven_m >= p.trigger_distance_m):
                self.phase = "brake"
            if self.phase == "brake":
                if car_speed > 1e-3:
                    return -min(p.brake_decel, car_speed / dt), False
                self.phase = "hold"
            if self.phase == "hold":
                self.held_s += dt
                self.ego_waited_s += dt if ego_speed < WAIT_SPEED else 0.0
                if self.ego_waited_s >= p.wait_s or self.held_s >= MAX_HOLD_S:
                    self.phase = "go"
                    return None, False
                return -car_speed / dt, False  # stays at zero speed
            return None, False
        if p.kind == "cut_in" and self.phase == "cruise":
            if gap_m <= p.trigger_gap_m or self.time_s >= CUT_IN_TIMEOUT_S:
                self.phase = "cut"
                return None, True
        return None, False
