"""Tests for the PID + Pure Pursuit baseline (td3_drive.driving.classical) and its node."""
from __future__ import annotations

import math

import numpy as np
import pytest

from td3_drive import topics as T
from td3_drive.driving.classical import PID, ClassicalConfig, PurePursuitPID, point_at_arc_length
from td3_drive.driving.observation import VehiclePose, project_on_route
from td3_drive.nodes.classical_controller import ClassicalControllerNode
from td3_drive.runtime.interface import LATCHED_QOS
from td3_drive.runtime.local import LocalRuntime
from td3_drive.runtime.messages import new_message, seconds, stamp

from support import odometry
from support import route as path

DT = 0.05
TARGET = 30.0 / 3.6


class Bicycle:
    """Kinematic bicycle referenced at the rear axle; CARLA steer sign (+ = right turn).

    Speed follows a first-order model of the pedal: tau * dv/dt = gain * a - v (v >= 0),
    so a = 1 tops out at ``gain`` m/s with an initial acceleration of gain / tau.
    """

    def __init__(self, config: ClassicalConfig, x: float, y: float, yaw: float, v: float,
                 gain: float = 30.0, tau: float = 8.0) -> None:
        self.c, self.x, self.y, self.yaw, self.v, self.gain, self.tau = config, x, y, yaw, v, gain, tau

    def pose(self) -> VehiclePose:
        """What odometry reports: the point rear_axle_offset ahead of the rear axle."""
        off = self.c.rear_axle_offset
        return VehiclePose(self.x + off * math.cos(self.yaw), self.y + off * math.sin(self.yaw),
                           self.yaw, self.v)

    def step(self, action: np.ndarray, dt: float = DT, hold_speed: bool = False) -> None:
        delta = -float(action[0]) * self.c.max_steer  # CARLA steer -> REP-103 wheel angle
        rate = self.v * math.tan(delta) / self.c.wheelbase
        if abs(rate) < 1e-9:
            self.x += self.v * math.cos(self.yaw) * dt
            self.y += self.v * math.sin(self.yaw) * dt
        else:  # exact arc for a constant steer over dt: no Euler drift for the controller to fight
            new_yaw = self.yaw + rate * dt
            self.x += self.v / rate * (math.sin(new_yaw) - math.sin(self.yaw))
            self.y -= self.v / rate * (math.cos(new_yaw) - math.cos(self.yaw))
            self.yaw = new_yaw
        if not hold_speed:
            self.v = max(self.v + dt * (self.gain * float(action[1]) - self.v) / self.tau, 0.0)


def straight_route(length: float = 300.0, spacing: float = 2.0) -> np.ndarray:
    x = np.arange(0.0, length + spacing, spacing)
    return np.stack([x, np.zeros_like(x)], axis=1)


def circle_route(radius: float, spacing: float = 2.0, turns: float = 0.9) -> np.ndarray:
    """Counter-clockwise (left-curving) arc from (0, 0) heading +x, centre (0, radius)."""
    theta = np.linspace(0.0, 2 * math.pi * turns, int(2 * math.pi * turns * radius / spacing) + 1)
    return np.stack([radius * np.sin(theta), radius - radius * np.cos(theta)], axis=1)


def run_closed_loop(route: np.ndarray, car: Bicycle, seconds_: float, hold_speed: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lateral of the odometry point, lateral of the rear axle, speed) per tick."""
    ctrl = PurePursuitPID(car.c)
    ctrl.reset()
    lat, lat_rear, speed = [], [], []
    for _ in range(int(round(seconds_ / DT))):
        action = ctrl.act(car.pose(), route, DT)
        assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)
        car.step(action, hold_speed=hold_speed)
        lat.append(project_on_route(car.pose(), route).lateral)
        lat_rear.append(project_on_route(VehiclePose(car.x, car.y, car.yaw, car.v), route).lateral)
        speed.append(car.v)
    return np.array(lat), np.array(lat_rear), np.array(speed)


# --------------------------------------------------------------------------------------------
# Pure Pursuit
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset", [2.0, -2.0])
def test_pure_pursuit_converges_to_straight_route(offset: float) -> None:
    cfg = ClassicalConfig()
    car = Bicycle(cfg, x=5.0, y=offset, yaw=0.0, v=TARGET)
    first = PurePursuitPID(cfg).act(car.pose(), straight_route(), DT)
    # left of the route (+y) must steer right, i.e. positive CARLA steer, and vice versa
    assert np.sign(first[0]) == np.sign(offset)
    lat, _, _ = run_closed_loop(straight_route(), car, 15.0)
    assert abs(lat[-1]) < 0.05
    assert np.all(np.abs(lat[-100:]) < 0.05)  # settled for the last 5 s
    # approaches without crossing far to the other side
    assert np.max(-np.sign(offset) * lat) < 0.2


@pytest.mark.parametrize("radius", [15.0, 40.0])
def test_pure_pursuit_tracks_circle(radius: float) -> None:
    cfg = ClassicalConfig()
    route = circle_route(radius)
    car = Bicycle(cfg, x=-cfg.rear_axle_offset, y=0.0, yaw=0.0, v=TARGET)  # odometry point on the start
    lat, lat_rear, speed = run_closed_loop(route, car, 0.6 * 2 * math.pi * radius / TARGET, hold_speed=True)
    steady = slice(len(lat) // 3, None)
    # the rear axle follows the arc exactly in steady state (pure pursuit is exact on a circle)
    assert np.max(np.abs(lat_rear[steady])) < 0.05
    # the odometry point, half a wheelbase ahead, rides outside: sqrt(R^2 + off^2) - R
    expected = -(math.hypot(radius, cfg.rear_axle_offset) - radius)  # outside of a left turn = right = -
    assert np.max(np.abs(lat[steady] - expected)) < 0.05
    assert np.max(np.abs(lat)) < 0.3


def test_point_at_arc_length_interpolates_and_extends() -> None:
    route = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])
    np.testing.assert_allclose(point_at_arc_length(route, 5.0), [5.0, 0.0])
    np.testing.assert_allclose(point_at_arc_length(route, 15.0), [10.0, 5.0])
    np.testing.assert_allclose(point_at_arc_length(route, 23.0), [10.0, 13.0])  # past the end
    np.testing.assert_allclose(point_at_arc_length(route, -3.0), [0.0, 0.0])


def test_steer_saturates_and_is_finite_far_off_route() -> None:
    ctrl = PurePursuitPID()
    action = ctrl.act(VehiclePose(0.0, 0.0, math.pi, 8.0), straight_route(), DT)  # facing backwards
    assert np.all(np.isfinite(action)) and np.all(np.abs(action) <= 1.0)


# --------------------------------------------------------------------------------------------
# PID
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gain,tau", [(30.0, 8.0), (20.0, 4.0), (40.0, 12.0)])
def test_pid_reaches_target_speed_without_large_overshoot(gain: float, tau: float) -> None:
    cfg = ClassicalConfig()
    pid = PID(cfg.kp, cfg.ki, cfg.kd)
    v, speeds = 0.0, []
    for _ in range(int(30.0 / DT)):
        a = pid.update(cfg.target_speed, v, DT)
        assert -1.0 <= a <= 1.0
        v = max(v + DT * (gain * a - v) / tau, 0.0)
        speeds.append(v)
    speeds_ = np.array(speeds)
    assert speeds_.max() < 1.05 * cfg.target_speed  # < 5% overshoot
    assert abs(speeds_[-1] - cfg.target_speed) < 0.01 * cfg.target_speed
    settle = np.flatnonzero(np.abs(speeds_ - cfg.target_speed) > 0.02 * cfg.target_speed)[-1] * DT
    assert settle < 15.0


def test_pid_anti_windup_leaves_saturation_at_once() -> None:
    pid = PID(kp=0.5, ki=0.1)
    for _ in range(2000):  # 100 s stuck far below the setpoint (e.g. blocked): output saturated
        assert pid.update(10.0, 0.0, DT) == 1.0
    assert pid.integral <= 1.0 / 0.1 + 1e-9
    # just above the setpoint the output must already be braking, not coasting on a wound-up integral
    assert pid.update(10.0, 10.5, DT) < 0.0 or pid.integral < 5.0
    naive_integral = 10.0 * 2000 * DT
    assert pid.integral < 0.1 * naive_integral


def test_pid_rejects_bad_dt() -> None:
    with pytest.raises(ValueError):
        PID(1.0, 0.1).update(1.0, 0.0, 0.0)


# --------------------------------------------------------------------------------------------
# Node on the local runtime
# --------------------------------------------------------------------------------------------


def image(t: float):
    return new_message(T.IMAGE, header=new_message(T.HEADER, stamp=stamp(t), frame_id="ego_vehicle/rgb_front"),
                       height=1, width=1, encoding="bgra8", step=4, data=np.zeros(4, dtype=np.uint8))


class Graph:
    def __init__(self, parameters: dict | None = None) -> None:
        self.rt = LocalRuntime({"classical_controller": parameters or {}})
        self.node = ClassicalControllerNode(self.rt.context("classical_controller"))
        self.topics = T.Topics()
        self.controls: list = []
        self.rt.context("probe").create_subscription(T.CONTROL, self.topics.control, self.controls.append)

    def tick(self, t: float, *msgs: tuple[str, object]) -> None:
        for topic, msg in msgs:
            self.rt.publish(topic, msg)
        self.rt.publish(self.topics.camera, image(t))
        self.rt.spin()


def test_node_publishes_one_control_per_image_with_its_stamp_and_steers_left() -> None:
    g = Graph()
    route = circle_route(20.0)  # curves left from the origin
    g.rt.publish(g.topics.route, path(route))
    for k in range(10):
        t = 100.0 + k * DT
        g.tick(t, (g.topics.odometry, odometry(t, 0.0, 0.0, 0.0, TARGET)))
        assert len(g.controls) == k + 1
        assert seconds(g.controls[-1].header.stamp) == pytest.approx(t)
    ctl = g.controls[-1]
    assert ctl.steer < -0.05  # left turn = negative CARLA steer
    assert ctl.throttle == 0.0 or ctl.brake == 0.0
    assert g.node.drops.counts == {} and g.node.published == 10


def test_node_brakes_until_ready_and_counts_invalid_messages() -> None:
    g = Graph()
    g.tick(1.0)  # no odometry, no route yet: full brake, still one control for the tick
    assert len(g.controls) == 1 and g.controls[0].brake == 1.0 and g.controls[0].throttle == 0.0
    bad = odometry(1.05, float("nan"), 0.0, 0.0, 1.0)
    empty = new_message(T.PATH)
    g.tick(1.05, (g.topics.odometry, bad), (g.topics.route, empty))
    assert g.node.drops.counts["non_finite"] == 1 and g.node.drops.counts["empty_route"] == 1
    g.tick(1.1, (g.topics.odometry, odometry(1.1, 0.0, 0.0, 0.0, 0.0)), (g.topics.route, path(straight_route())))
    assert g.controls[-1].throttle > 0.0 and g.controls[-1].brake == 0.0  # standing still: accelerate
    g.tick(3.0)  # the image comes before its odometry (as from the bridge): it waits, never steers on 1.1's
    assert len(g.controls) == 3
    g.rt.publish(g.topics.odometry, odometry(3.0, 0.0, 0.0, 0.0, 2 * TARGET))
    g.rt.spin()  # now steered (and braked: twice the target speed) from the pose of its own tick
    assert len(g.controls) == 4 and seconds(g.controls[-1].header.stamp) == pytest.approx(3.0)
    assert g.controls[-1].brake > 0.0 and g.controls[-1].throttle == 0.0
    for c in g.controls:
        assert all(math.isfinite(v) for v in (c.steer, c.throttle, c.brake))


def test_node_resets_pid_on_episode_start_and_reads_parameters() -> None:
    g = Graph({"target_speed": 5.0, "max_steer_deg": 30.0})
    assert g.node.config.target_speed == 5.0
    assert g.node.config.max_steer == pytest.approx(math.radians(30.0))
    g.rt.publish(g.topics.route, path(straight_route()))
    for k in range(40):
        t = k * DT
        g.tick(t, (g.topics.odometry, odometry(t, 0.0, 0.0, 0.0, 4.5)))  # PID not saturated
    assert g.node.controller.pid.integral > 0.0
    before = g.node.controller.pid.integral
    g.rt.publish(g.topics.route, path(straight_route(), 2.0))  # each episode comes with its route
    g.rt.publish(g.topics.episode_start, new_message(T.HEADER, stamp=stamp(2.0), frame_id="1"))
    g.rt.spin()
    # the reset happens on the new episode's first frame: one step's worth of integral, not 40
    g.tick(2.0, (g.topics.odometry, odometry(2.0, 0.0, 0.0, 0.0, 4.5)))
    assert 0.0 < g.node.controller.pid.integral <= (5.0 - 4.5) * DT + 1e-9 < before


def test_route_subscription_is_latched() -> None:
    rt = LocalRuntime()
    topics = T.Topics()
    rt.context("sim").create_publisher(T.PATH, topics.route, LATCHED_QOS).publish(path(straight_route()))
    rt.spin()
    node = ClassicalControllerNode(rt.context("classical_controller"))  # joins late
    rt.spin()
    assert node.route is not None and len(node.route) == len(straight_route())
