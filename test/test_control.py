"""Tests for td3_drive.driving.control: action <-> CarlaEgoVehicleControl."""
from __future__ import annotations

import numpy as np
import pytest

from td3_drive.driving.control import BRAKE, action_to_control_fields, control_to_action
from td3_drive.driving.observation import InvalidMessage
from td3_drive.runtime.messages import new_message

CONTROL = "carla_msgs/msg/CarlaEgoVehicleControl"


@pytest.mark.parametrize("action,expected", [
    ((0.3, 0.6), {"steer": 0.3, "throttle": 0.6, "brake": 0.0}),
    ((-0.5, -0.25), {"steer": -0.5, "throttle": 0.0, "brake": 0.25}),
    ((0.0, 0.0), {"steer": 0.0, "throttle": 0.0, "brake": 0.0}),  # coast
    ((1.7, 3.0), {"steer": 1.0, "throttle": 1.0, "brake": 0.0}),  # clipped
    ((-2.0, -1.5), {"steer": -1.0, "throttle": 0.0, "brake": 1.0}),
])
def test_action_to_control_fields(action, expected) -> None:
    fields, valid = action_to_control_fields(np.array(action, dtype=np.float32))
    assert valid
    assert fields.keys() == expected.keys()
    for key, value in expected.items():
        assert fields[key] == pytest.approx(value, abs=1e-6)
        assert type(fields[key]) is float  # rclpy float fields reject numpy scalars
    msg = new_message(CONTROL, **fields)  # the dict builds a real message
    assert msg.brake == pytest.approx(expected["brake"], abs=1e-6)


@pytest.mark.parametrize("action", [(np.nan, 0.5), (0.1, np.inf), (-np.inf, -np.inf)])
def test_non_finite_action_brakes(action) -> None:
    fields, valid = action_to_control_fields(action)
    assert not valid
    assert fields == {"steer": 0.0, "throttle": 0.0, "brake": 1.0} == dict(BRAKE)


def test_action_shape_checked() -> None:
    with pytest.raises(InvalidMessage) as info:
        action_to_control_fields([0.1, 0.2, 0.3])
    assert info.value.reason == "bad_action_shape"


def test_brake_is_read_only() -> None:
    with pytest.raises(TypeError):
        BRAKE["brake"] = 0.0  # type: ignore[index]
    assert new_message(CONTROL, **BRAKE).brake == 1.0


def test_control_to_action_inverts_the_mapping() -> None:
    for action in np.random.default_rng(0).uniform(-1, 1, (50, 2)).astype(np.float32):
        fields, _ = action_to_control_fields(action)
        msg = new_message(CONTROL, **fields)  # float32 fields, as on the wire
        np.testing.assert_allclose(control_to_action(msg), action, atol=1e-6)
        np.testing.assert_allclose(control_to_action(fields), action, atol=1e-6)
    assert control_to_action(dict(BRAKE)).tolist() == [0.0, -1.0]
    # both pedals pressed (a human or PID controller might): net pedal
    assert control_to_action({"steer": 0.0, "throttle": 0.7, "brake": 0.2})[1] == pytest.approx(0.5)


@pytest.mark.parametrize("fields,reason", [
    ({"steer": 1.2, "throttle": 0.0, "brake": 0.0}, "control_out_of_range"),
    ({"steer": 0.0, "throttle": -0.1, "brake": 0.0}, "control_out_of_range"),
    ({"steer": 0.0, "throttle": 0.0, "brake": 1.5}, "control_out_of_range"),
    ({"steer": float("nan"), "throttle": 0.0, "brake": 0.0}, "non_finite"),
    ({"steer": 0.0, "throttle": float("inf"), "brake": 0.0}, "non_finite"),
])
def test_control_to_action_validates(fields, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        control_to_action(fields)
    assert info.value.reason == reason
    with pytest.raises(InvalidMessage) as info:
        control_to_action(new_message(CONTROL, **fields))
    assert info.value.reason == reason


TOL = 1e-6  # control._TOLERANCE: float32 rounding of a value computed at the limit


@pytest.mark.parametrize("steer,throttle,brake,action", [
    (1.0, 1.0, 0.0, (1.0, 1.0)),  # the limits themselves are valid
    (-1.0, 0.0, 1.0, (-1.0, -1.0)),
    (1.0 + TOL / 2, 1.0 + TOL / 2, 0.0, (1.0, 1.0)),  # a hair over: accepted, clipped back
    (1.0 + TOL, 1.0 + TOL, 1.0 + TOL, (1.0, 0.0)),  # the tolerance itself is in
    (0.0, -TOL, -TOL, (0.0, 0.0)),
    (-1.0 - TOL / 2, -TOL / 2, 1.0 + TOL / 2, (-1.0, -1.0)),
])
def test_control_to_action_at_the_limits(steer, throttle, brake, action) -> None:
    out = control_to_action({"steer": steer, "throttle": throttle, "brake": brake})
    assert out.dtype == np.float32 and out.tolist() == list(action)


@pytest.mark.parametrize("fields", [
    {"steer": -1.0 - 2 * TOL, "throttle": 0.0, "brake": 0.0},
    {"steer": 0.0, "throttle": 1.0 + 2 * TOL, "brake": 0.0},
    {"steer": 0.0, "throttle": -2 * TOL, "brake": 0.0},
    {"steer": 0.0, "throttle": 0.0, "brake": 1.0 + 2 * TOL},
    {"steer": 0.0, "throttle": 0.0, "brake": -2 * TOL},
])
def test_control_to_action_refuses_beyond_the_tolerance(fields) -> None:
    with pytest.raises(InvalidMessage) as info:
        control_to_action(fields)
    assert info.value.reason == "control_out_of_range"


def test_action_of_any_shape_with_two_values() -> None:
    """The policy's (1, 2) batch of one is one action; its dtype does not matter."""
    for action in (np.array([[0.25, -0.5]], np.float32), [0.25, -0.5], np.array([0.25, -0.5], np.float64)):
        fields, valid = action_to_control_fields(action)
        assert valid and fields == {"steer": 0.25, "throttle": 0.0, "brake": 0.5}
