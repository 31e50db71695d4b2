"""Classical baseline: PID speed control + Pure Pursuit steering on the route.

Outputs the TD3 action a = (steer, throttle_or_brake) in [-1, 1]^2, mapped to
CarlaEgoVehicleControl by ``control.action_to_control_fields`` exactly like the
policy's, so both drivers are compared through the same actuator path.

Steering sign: CARLA's ``steer`` is positive for a RIGHT turn (carla.VehicleControl;
the bridge's ackermann controller negates the ROS steering angle for the same reason),
while our geometry is ROS REP-103 (yaw counter-clockwise, a left turn has a positive
steering angle).  So steer = -delta / max_steer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from td3_drive.driving.observation import VehiclePose, project_on_route
from td3_drive.settings import setting

__all__ = ["PID", "ClassicalConfig", "PurePursuitPID", "point_at_arc_length", "idm_acceleration"]


class PID:
    """PID on (setpoint - measurement) with output limits and conditional-integration anti-windup.

    The derivative acts on the measurement, not the error, so a setpoint change or a reset
    gives no derivative kick.  The integral only grows while the output is not saturated
    (or the error pulls it back out of saturation), and ki * integral never exceeds the
    output range on its own.
    """

    def __init__(self, kp: float, ki: float, kd: float = 0.0,
                 out_min: float = -1.0, out_max: float = 1.0) -> None:
        if out_min >= out_max:
            raise ValueError("out_min must be < out_max")
        self.kp, self.ki, self.kd = float(kp), float(ki), float(kd)
        self.out_min, self.out_max = float(out_min), float(out_max)
        self.reset()

    def reset(self) -> None:
        """Forget the integral and the previous measurement."""
        self.integral = 0.0
        self._prev_measurement: float | None = None

    def update(self, setpoint: float, measurement: float, dt: float) -> float:
        """One control step of ``dt`` seconds; returns the output in [out_min, out_max]."""
        if not (math.isfinite(dt) and dt > 0.0):
            raise ValueError(f"dt must be finite and > 0, got {dt}")
        error = setpoint - measurement
        p = self.kp * error
        d = 0.0
        if self._prev_measurement is not None:
            d = -self.kd * (measurement - self._prev_measurement) / dt
        self._prev_measurement = measurement

        candidate = self.integral + error * dt
        u = p + self.ki * candidate + d
        pushing_up, pushing_down = u >= self.out_max and error > 0, u <= self.out_min and error < 0
        if not (pushing_up or pushing_down):
            self.integral = candidate
        if self.ki > 0.0:  # the I term alone may not hold the output past a limit
            self.integral = min(max(self.integral, self.out_min / self.ki), self.out_max / self.ki)
        return min(max(p + self.ki * self.integral + d, self.out_min), self.out_max)


@dataclass
class ClassicalConfig:
    """Parameters of the PID + Pure Pursuit baseline (SI units; every field is a node parameter)."""

    target_speed: float = setting(30.0 / 3.6, "m/s (default 30 km/h, the failed predecessor's baseline speed)")
    # PID gains on the speed error (m/s) -> throttle_or_brake in [-1, 1]
    kp: float = setting(0.5, "speed PID proportional gain (per m/s)")
    ki: float = setting(0.1, "speed PID integral gain (per m)")
    kd: float = setting(0.0, "speed PID derivative gain (per m/s^2)")
    wheelbase: float = setting(2.875, "m (Tesla Model 3, the bridge's default ego vehicle)")
    max_steer_deg: float = setting(70.0, "front wheel angle at steer = 1 (deg; CARLA's default for most cars)")
    # where Pure Pursuit's geometry holds (CARLA's vehicle origin is near the bounding-box centre:
    # about half the wheelbase)
    rear_axle_offset: float = setting(2.875 / 2.0, "m from the odometry position back to the rear axle")
    lookahead_gain: float = setting(0.5, "s; lookahead distance ld = lookahead_gain * v + lookahead_min")
    lookahead_min: float = setting(3.0, "m")
    nominal_dt: float = setting(0.05, "s, CARLA fixed_delta_seconds: dt of an episode's first tick and "
                                      "whenever image stamps do not increase")
    # the privileged driver: IDM gap keeping on the simulator's true lead distance (BehaviorAgent-style)
    privileged: bool = setting(False, "keep a gap to the car ahead with IDM, from the embedded simulator's ground "
                                      "truth (/td3/ground_truth/lead); false: the blind PID + Pure Pursuit")
    time_headway: float = setting(1.5, "s; IDM desired time gap T to the car ahead")
    min_gap: float = setting(3.0, "m; IDM jam distance s0, bumper to bumper")
    max_accel: float = setting(3.0, "m/s^2; IDM maximum acceleration a, and the acceleration at full throttle")
    comfort_decel: float = setting(3.0, "m/s^2; IDM comfortable deceleration b")
    max_decel: float = setting(8.0, "m/s^2; deceleration at full brake (the pedal that asks for IDM's braking)")

    @property
    def max_steer(self) -> float:
        """rad; max front wheel angle, steer = +-1."""
        return math.radians(self.max_steer_deg)

    def __post_init__(self) -> None:
        if self.wheelbase <= 0 or self.max_steer <= 0 or self.lookahead_min <= 0 or self.lookahead_gain < 0:
            raise ValueError(f"invalid classical controller config: {self}")


def point_at_arc_length(route: np.ndarray, s: float) -> np.ndarray:
    """Point of the (N, 2) polyline at arc length ``s`` from its start.

    Beyond the end, the last segment is extended (so the lookahead keeps pointing along the
    route's final direction instead of collapsing onto the end point); before the start, the
    start point.
    """
    route = np.asarray(route, dtype=np.float64)
    seg = np.diff(route, axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    cum = np.concatenate(([0.0], np.cumsum(lengths)))
    if s >= cum[-1]:
        last = np.flatnonzero(lengths > 0.0)[-1]
        return route[-1] + seg[last] / lengths[last] * (s - cum[-1])
    return np.array([np.interp(s, cum, route[:, 0]), np.interp(s, cum, route[:, 1])])


def idm_acceleration(speed: float, desired_speed: float, gap: float, lead_speed: float, config: ClassicalConfig,
                     ) -> float:
    """Intelligent Driver Model (Treiber et al. 2000): a [1 - (v/v0)^4 - (s*/s)^2], s* = s0 + v T + v dv / 2 sqrt(ab).

    ``gap`` is bumper to bumper (inf: no car ahead); a gap of zero or less asks for an unbounded brake.
    """
    c = config
    free = 1.0 - (max(speed, 0.0) / desired_speed) ** 4
    if not math.isfinite(gap):
        return c.max_accel * free
    if gap <= 0.0:
        return -math.inf
    dv = speed - lead_speed  # closing speed
    s_star = c.min_gap + max(0.0, speed * c.time_headway + speed * dv / (2.0 * math.sqrt(c.max_accel * c.comfort_decel)))
    return c.max_accel * (free - (s_star / gap) ** 2)


class PurePursuitPID:
    """The classical driver: ``reset()`` per episode, ``act(pose, route, dt)`` per tick."""

    def __init__(self, config: ClassicalConfig | None = None) -> None:
        self.config = config or ClassicalConfig()
        c = self.config
        self.pid = PID(c.kp, c.ki, c.kd, -1.0, 1.0)

    def reset(self) -> None:
        """New episode: clear the PID state (Pure Pursuit is stateless)."""
        self.pid.reset()

    def steering_angle(self, pose: VehiclePose, route: np.ndarray) -> float:
        """Pure Pursuit front-wheel angle (rad, REP-103: positive = left), before limits.

        Target: the route point ld = k * v + ld_min further along the route than the rear
        axle's projection; delta = atan(2 L sin(alpha) / d), alpha the target's bearing in
        the vehicle frame and d its distance from the rear axle (= ld on a straight route
        with the car on it).
        """
        c = self.config
        cos_y, sin_y = math.cos(pose.yaw), math.sin(pose.yaw)
        rear = VehiclePose(pose.x - c.rear_axle_offset * cos_y, pose.y - c.rear_axle_offset * sin_y,
                           pose.yaw, pose.speed)
        proj = project_on_route(rear, route)
        lookahead = c.lookahead_gain * max(pose.speed, 0.0) + c.lookahead_min
        target = point_at_arc_length(route, proj.s_along + lookahead)
        dx, dy = target[0] - rear.x, target[1] - rear.y
        forward, left = cos_y * dx + sin_y * dy, -sin_y * dx + cos_y * dy  # world -> vehicle frame
        dist = math.hypot(forward, left)
        if dist < 1e-6:
            return 0.0
        return math.atan(2.0 * c.wheelbase * (left / dist) / dist)

    def act(self, pose: VehiclePose, route: np.ndarray, dt: float,
            lead: tuple[float, float] | None = None) -> np.ndarray:
        """Action (2,) float32 in [-1, 1]: [steer (CARLA sign: + = right), throttle_or_brake].

        ``lead`` (gap [m], speed [m/s]) of the car ahead, for the privileged driver: the pedal is then
        the lower of the speed PID's and the one that gives IDM's acceleration.
        """
        c = self.config
        delta = self.steering_angle(pose, np.asarray(route, dtype=np.float64))
        steer = min(max(-delta / c.max_steer, -1.0), 1.0)
        pedal = self.pid.update(c.target_speed, pose.speed, dt)
        if lead is not None:
            accel = idm_acceleration(pose.speed, c.target_speed, lead[0], lead[1], c)
            pedal = min(pedal, accel / c.max_accel if accel >= 0.0 else max(accel / c.max_decel, -1.0))
        return np.array([steer, pedal], dtype=np.float32)
