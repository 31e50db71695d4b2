"""Policy action <-> carla_msgs/CarlaEgoVehicleControl.

The actor outputs a = (a0, a1) in [-1, 1]^2:
    steer = a0,  throttle = a1 if a1 > 0 else 0,  brake = -a1 if a1 < 0 else 0.
One axis for throttle and brake means the car can never press both, and a1 = 0 coasts.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from td3_drive.driving.observation import InvalidMessage

__all__ = ["ACTION_DIM", "BRAKE", "WATCHDOG_FRAME_ID", "action_to_control_fields", "control_to_action"]

ACTION_DIM = 2

#: Full brake, wheels straight: what the watchdog publishes when the policy is silent
#: or produced garbage.  Read-only; use as ``new_message(CONTROL, **BRAKE)``.
BRAKE: Mapping[str, float] = MappingProxyType({"steer": 0.0, "throttle": 0.0, "brake": 1.0})
#: header.frame_id of the watchdog's brake commands: never an action of the policy
WATCHDOG_FRAME_ID = "watchdog"

# float32 fields round-trip 1.0 exactly, but allow a hair for values computed in float32
_TOLERANCE = 1e-6


def action_to_control_fields(action: Any) -> tuple[dict[str, float], bool]:
    """Action (2,) -> ({steer, throttle, brake} as Python floats, valid).

    Values are clipped to their ranges.  A non-finite action is never published: it maps
    to a full brake (BRAKE) and ``valid`` is False so the caller can count it.
    Python floats (not numpy scalars) because rclpy's float fields reject np.float32.
    """
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape != (ACTION_DIM,):
        raise InvalidMessage("bad_action_shape", f"action has {a.size} values, expected {ACTION_DIM}")
    if not np.isfinite(a).all():
        return dict(BRAKE), False
    steer = float(np.clip(a[0], -1.0, 1.0))
    pedal = float(np.clip(a[1], -1.0, 1.0))
    return {"steer": steer, "throttle": max(pedal, 0.0), "brake": max(-pedal, 0.0)}, True


def control_to_action(msg_or_fields: Any) -> np.ndarray:
    """CarlaEgoVehicleControl message (or a mapping with steer/throttle/brake) -> action (2,) float32.

    a0 = steer, a1 = throttle - brake (exact inverse of action_to_control_fields).
    Raises InvalidMessage: non_finite, or control_out_of_range (steer outside [-1, 1],
    throttle/brake outside [0, 1]).
    """
    if isinstance(msg_or_fields, Mapping):
        steer, throttle, brake = (msg_or_fields[k] for k in ("steer", "throttle", "brake"))
    else:
        steer, throttle, brake = msg_or_fields.steer, msg_or_fields.throttle, msg_or_fields.brake
    steer, throttle, brake = float(steer), float(throttle), float(brake)
    if not all(math.isfinite(v) for v in (steer, throttle, brake)):
        raise InvalidMessage("non_finite", "control has NaN/Inf")
    if (abs(steer) > 1.0 + _TOLERANCE or not -_TOLERANCE <= throttle <= 1.0 + _TOLERANCE
            or not -_TOLERANCE <= brake <= 1.0 + _TOLERANCE):
        raise InvalidMessage("control_out_of_range",
                             f"steer={steer} throttle={throttle} brake={brake}")
    action = np.array([steer, throttle - brake], dtype=np.float32)
    return np.clip(action, -1.0, 1.0)
