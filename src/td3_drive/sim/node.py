"""SimulatorNode: the embedded racetrack published with the CARLA ROS bridge's topics.

Lockstep like the bridge with ``synchronous_mode_wait_for_vehicle_control_command``:
:meth:`SimulatorNode.start` publishes the first tick, and from then on the world
ticks exactly once per control command received, then publishes that tick.  A
``reset_request`` turns the next tick into the first tick of a new episode
(seed = base seed + episode number, so every episode can be replayed alone).

With separate processes (the dds runtime) the world paces itself on the wall clock:
``pace: deadline`` ticks on each control or, when none came within ``control_deadline``,
with the last control applied (a lost or late control never stalls the world);
``pace: realtime`` ticks every ``dt`` with the latest control, like CARLA's asynchronous mode.
Either way it measures each control's latency: wall time from publishing a tick to receiving
the control stamped with that tick's camera stamp.

Within one tick we publish /clock first (LocalRuntime takes its time from it, as
use_sim_time nodes do), then status, route and episode start, then the vehicle
topics in ``publish_order``: "bridge" (the default) sends the sensors (collision,
lane invasion, camera) before the pseudo-sensors (odometry, speedometer, vehicle
status), as carla-ros-bridge does; "camera_last" the other way.  Nodes pair the
camera with the odometry of its own stamp, so both orders give the same run; with
real DDS there is no order at all, and the stamps are what match messages.
"""
from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable

import numpy as np

from td3_drive import topics as T
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, NodeContext, yaw_quaternion
from td3_drive.runtime.node import Node
from td3_drive.runtime.ros import run_node
from td3_drive.sim.racetrack import RacetrackSim, SimConfig, SimFrame, sanitize_control

PUBLISH_ORDERS = ("bridge", "camera_last")
PACES = ("lockstep", "deadline", "realtime")
#: control latencies kept for the statistics (the last minute at 20 Hz)
LATENCY_WINDOW = 1200


class SimulatorNode(Node):
    """Publishes the racetrack as the CARLA bridge would; ticks once per control command."""

    def __init__(self, ctx: NodeContext, config: SimConfig | None = None) -> None:
        super().__init__(ctx)
        self.config = self.declare_config(SimConfig, defaults=config)
        if self.config.publish_order not in PUBLISH_ORDERS:
            raise ValueError(f"publish_order must be one of {PUBLISH_ORDERS}, got {self.config.publish_order!r}")
        if self.config.pace not in PACES:
            raise ValueError(f"pace must be one of {PACES}, got {self.config.pace!r}")
        self.role_name = self.topics.role_name
        self.sim = RacetrackSim(self.config)
        # tick time in integer nanoseconds, so /clock advances by exactly dt per tick
        self._dt_ns = int(round(self.config.dt * 1e9))

        tp = self.topics
        self._pub_clock = ctx.create_publisher(T.CLOCK, tp.clock, RELIABLE_QOS)
        self._pub_status = ctx.create_publisher(T.CARLA_STATUS, tp.carla_status, RELIABLE_QOS)
        self._pub_route = ctx.create_publisher(T.PATH, tp.route, LATCHED_QOS)
        self._pub_episode = ctx.create_publisher(T.HEADER, tp.episode_start, LATCHED_QOS)
        self._pub_odom = ctx.create_publisher(T.ODOMETRY, tp.odometry, RELIABLE_QOS)
        self._pub_speed = ctx.create_publisher(T.FLOAT32, tp.speedometer, RELIABLE_QOS)
        self._pub_vstatus = ctx.create_publisher(T.VEHICLE_STATUS, tp.vehicle_status, RELIABLE_QOS)
        self._pub_collision = ctx.create_publisher(T.COLLISION, tp.collision, RELIABLE_QOS)
        self._pub_invasion = ctx.create_publisher(T.LANE_INVASION, tp.lane_invasion, RELIABLE_QOS)
        self._pub_camera = ctx.create_publisher(T.IMAGE, tp.camera, RELIABLE_QOS)
        self._pub_lead = ctx.create_publisher(T.JOINT_STATE, tp.lead_ground_truth, RELIABLE_QOS)
        ctx.create_subscription(T.CONTROL, tp.control, self._on_control, RELIABLE_QOS)
        ctx.create_subscription(T.HEADER, tp.reset_request, self._on_reset_request, RELIABLE_QOS)
        self.publish_diagnostics_every(1.0)
        #: bad controls per reason: control_clamped (applied after clamping), control_non_finite (ignored)

        # counters (read by tests, diagnostics and the CLI)
        self.ticks = 0  # world ticks published, episode starts included
        self.episodes = 0  # episodes started
        self.episode = -1  # number of the current episode
        self.resets_by_reason: dict[str, int] = {}
        self.reset_requests = 0
        self.controls_received = 0
        self.collisions = 0
        self.lane_invasions = 0
        self.started = False
        self.last_frame: SimFrame | None = None
        self._pending_reset: str | None = None
        self._applied = (0.0, 0.0, 0.0)
        self._hand_brake = False
        self._last_control_warning_s = -math.inf
        self._resume_point: dict[str, Any] = {}
        #: the hazard of each episode's seed (sim/hazards.py), for evaluation rows
        self.hazard_by_seed: dict[int, str] = {}
        # wall-clock pacing and control latency
        self.control_latencies_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.ticks_without_control = 0  # deadline/realtime ticks that no control had answered
        self._tick_wall_s = time.monotonic()
        self._tick_ns = 0
        self._answered = False
        if self.config.pace != "lockstep":
            wall_timer = getattr(ctx, "create_wall_timer", None)
            if wall_timer is None:
                raise ValueError(f"pace {self.config.pace!r} needs a runtime with a wall clock (dds or ros)")
            period = self.config.dt if self.config.pace == "realtime" else self.config.control_deadline / 5
            wall_timer(period, self._on_wall_timer)

    @property
    def controls_clamped(self) -> int:
        """Controls applied after clamping to the valid range."""
        return self.drops.counts.get("control_clamped", 0)

    @property
    def controls_rejected(self) -> int:
        """Non-finite controls, ignored (the previous control stays applied)."""
        return self.drops.counts.get("control_non_finite", 0)

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        """Publish the first tick of the first episode (call once, after all nodes are wired)."""
        if self.started:
            return
        self.started = True
        self._begin_episode()

    def _begin_episode(self) -> None:
        # what start() on a fresh node needs to publish this very first tick again (exact resume)
        self._resume_point = {"episode": self.episode, "episodes": self.episodes, "ticks": self.ticks,
                              "resets_by_reason": dict(self.resets_by_reason)}
        self.episode += 1
        self.episodes += 1
        self._applied, self._hand_brake = (0.0, 0.0, 0.0), False
        frame = self.sim.reset(self.config.seed + self.episode)
        self.hazard_by_seed[frame.seed] = frame.hazard
        self._publish_tick(frame, episode_start=True)

    # --- callbacks --------------------------------------------------------------------
    def _on_reset_request(self, msg: Any) -> None:
        self.reset_requests += 1
        if self._pending_reset is None:  # several requests before the next tick: one reset
            self._pending_reset = msg.frame_id or "unspecified"

    def _on_control(self, msg: Any) -> None:
        if not self.started:
            self.ctx.logger.warning("control before start(): starting the first episode instead")
            self.start()
            return
        self.controls_received += 1
        if self._pending_reset is not None and self.config.pace != "realtime":
            self._step()  # the reset takes this tick; the control was for the old episode
            return
        brake = 1.0 if msg.hand_brake else msg.brake
        applied, verdict = sanitize_control(msg.throttle, msg.steer, brake, self._applied)
        if verdict != "ok":
            self.drops.count("control_clamped" if verdict == "clamped" else "control_non_finite")
            if self.ctx.now() - self._last_control_warning_s >= 1.0:  # at most once per sim second
                self._last_control_warning_s = self.ctx.now()
                self.ctx.logger.warning(
                    f"invalid control (throttle={msg.throttle}, steer={msg.steer}, brake={msg.brake}): "
                    f"{self.controls_clamped} clamped, {self.controls_rejected} rejected so far"
                )
        self._applied, self._hand_brake = applied, bool(msg.hand_brake)
        if int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec) == self._tick_ns:
            self.control_latencies_s.append(time.monotonic() - self._tick_wall_s)
            self._answered = True
        if self.config.pace != "realtime":
            self._step()

    def _on_wall_timer(self) -> None:
        """deadline: tick when the control is overdue; realtime: tick now."""
        overdue = time.monotonic() - self._tick_wall_s >= self.config.control_deadline
        if self.started and (self.config.pace == "realtime" or overdue):
            self.ticks_without_control += not self._answered
            self._step()

    def _step(self) -> None:
        if self._pending_reset is not None:
            reason, self._pending_reset = self._pending_reset, None
            self.resets_by_reason[reason] = self.resets_by_reason.get(reason, 0) + 1
            self._begin_episode()
            return
        self._publish_tick(self.sim.step(*self._applied), episode_start=False)

    # --- state (exact resume) -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-able resume point: the start of the current episode.

        Episodes are determined by their seed, so a fresh node with this state replays the
        current episode's first tick on :meth:`start`, stamps and all.
        """
        return dict(self._resume_point)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.started:
            raise RuntimeError("load_state_dict() must come before start()")
        self.episode, self.episodes, self.ticks = int(state["episode"]), int(state["episodes"]), int(state["ticks"])
        self.resets_by_reason = {str(k): int(v) for k, v in state["resets_by_reason"].items()}

    def status(self) -> dict[str, Any]:
        return {"ticks": self.ticks, "episodes": self.episodes, "controls_received": self.controls_received,
                "ticks_without_control": self.ticks_without_control, **self.latency_stats()}

    def latency_stats(self) -> dict[str, float]:
        """Control latency over the last ``LATENCY_WINDOW`` answered ticks, in ms (empty before any)."""
        if not self.control_latencies_s:
            return {}
        p50, p99 = np.percentile(np.asarray(self.control_latencies_s) * 1e3, [50, 99])
        return {"control_latency_p50_ms": round(float(p50), 3), "control_latency_p99_ms": round(float(p99), 3)}

    # --- publishing --------------------------------------------------------------------
    def _publish_tick(self, frame: SimFrame, episode_start: bool) -> None:
        ctx = self.ctx
        self.ticks += 1
        self.last_frame = frame
        t_ns = self.ticks * self._dt_ns
        self._tick_ns, self._tick_wall_s, self._answered = t_ns, time.monotonic(), False

        def header(frame_id: str) -> Any:
            return ctx.new(T.HEADER, stamp=stamp_ns(ctx, t_ns), frame_id=frame_id)

        if self.config.publish_clock:
            self._pub_clock.publish(ctx.new(T.CLOCK, clock=stamp_ns(ctx, t_ns)))
        self._pub_status.publish(ctx.new(
            T.CARLA_STATUS, frame=self.ticks, fixed_delta_seconds=self.config.dt,
            synchronous_mode=True, synchronous_mode_running=True,
        ))
        if episode_start:
            self._pub_route.publish(self._route_message(header("map")))
            self._pub_episode.publish(header(str(self.episode)))

        # ground truth before the camera: a privileged driver has it when the tick's image comes
        self._pub_lead.publish(ctx.new(T.JOINT_STATE, header=header(self.role_name), name=list(T.LEAD_NAMES),
                                       position=np.array([frame.lead_gap, frame.lead_speed])))
        if self.config.publish_order == "bridge":  # sensors first, then the pseudo-sensors
            self._publish_sensors(frame, header)
            self._publish_pseudo_sensors(frame, header)
        else:
            self._publish_pseudo_sensors(frame, header)
            self._publish_sensors(frame, header)

    def _publish_pseudo_sensors(self, frame: SimFrame, header: Callable[[str], Any]) -> None:
        """Odometry, speedometer, vehicle status: the bridge computes these itself."""
        ctx = self.ctx
        q = yaw_quaternion(ctx, frame.yaw)
        c, s = math.cos(frame.yaw), math.sin(frame.yaw)
        position = ctx.new("geometry_msgs/msg/Point", x=frame.x, y=frame.y)
        # twist in the child (vehicle) frame, as nav_msgs/Odometry specifies
        linear = ctx.new("geometry_msgs/msg/Vector3", x=c * frame.vx + s * frame.vy, y=-s * frame.vx + c * frame.vy)
        twist = ctx.new(
            "geometry_msgs/msg/Twist", linear=linear, angular=ctx.new("geometry_msgs/msg/Vector3", z=frame.yaw_rate)
        )
        odom = ctx.new(
            T.ODOMETRY,
            header=header("map"),
            child_frame_id=self.role_name,
            pose=ctx.new(
                "geometry_msgs/msg/PoseWithCovariance",
                pose=ctx.new("geometry_msgs/msg/Pose", position=position, orientation=q),
            ),
            twist=ctx.new("geometry_msgs/msg/TwistWithCovariance", twist=twist),
        )
        self._pub_odom.publish(odom)
        self._pub_speed.publish(ctx.new(T.FLOAT32, data=frame.speed))
        throttle, steer, brake = frame.control
        control = ctx.new(
            T.CONTROL, header=header(self.role_name), throttle=throttle, steer=steer, brake=brake,
            hand_brake=self._hand_brake, reverse=False, gear=1, manual_gear_shift=False,
        )
        accel = ctx.new("geometry_msgs/msg/Vector3", x=frame.ax, y=frame.ay)  # map frame, as the bridge reports
        self._pub_vstatus.publish(ctx.new(
            T.VEHICLE_STATUS, header=header("map"), velocity=frame.speed,
            acceleration=ctx.new("geometry_msgs/msg/Accel", linear=accel), orientation=q, control=control,
        ))

    def _publish_sensors(self, frame: SimFrame, header: Callable[[str], Any]) -> None:
        """Collision, lane invasion and the camera: CARLA sensors."""
        ctx = self.ctx
        if frame.collision:
            self.collisions += 1
            ix, iy, iz = frame.normal_impulse
            self._pub_collision.publish(ctx.new(
                T.COLLISION, header=header(f"{self.role_name}/collision"), other_actor_id=frame.other_actor_id,
                normal_impulse=ctx.new("geometry_msgs/msg/Vector3", x=ix, y=iy, z=iz),
            ))
        if frame.lane_invasion:
            self.lane_invasions += 1
            self._pub_invasion.publish(ctx.new(
                T.LANE_INVASION, header=header(f"{self.role_name}/lane_invasion"),
                crossed_lane_markings=np.asarray(frame.lane_invasion, dtype=np.int32),
            ))
        image = frame.image_bgra
        self._pub_camera.publish(ctx.new(
            T.IMAGE, header=header(f"{self.role_name}/rgb_front"), height=image.shape[0], width=image.shape[1],
            encoding="bgra8", is_bigendian=0, step=image.shape[1] * 4, data=np.ascontiguousarray(image).reshape(-1),
        ))

    def _route_message(self, path_header: Any) -> Any:
        ctx = self.ctx
        points = self.sim.route()
        tangent = np.diff(points, axis=0, append=points[-1:] + (points[-1:] - points[-2:-1]))
        yaws = np.arctan2(tangent[:, 1], tangent[:, 0])
        poses = [
            ctx.new(
                "geometry_msgs/msg/PoseStamped", header=path_header,
                pose=ctx.new(
                    "geometry_msgs/msg/Pose", position=ctx.new("geometry_msgs/msg/Point", x=float(x), y=float(y)),
                    orientation=yaw_quaternion(ctx, float(yaw)),
                ),
            )
            for (x, y), yaw in zip(points, yaws)
        ]
        return ctx.new(T.PATH, header=path_header, poses=poses)


def stamp_ns(ctx: NodeContext, t_ns: int) -> Any:
    """builtin_interfaces/Time from integer nanoseconds (exact, unlike float seconds)."""
    return ctx.new("builtin_interfaces/msg/Time", sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))


__all__ = ["SimulatorNode", "stamp_ns"]


#: ros2 run / launch: seconds to wait for the pipeline before ticking anyway
START_TIMEOUT_S = 60.0


def start_when_listened(node: SimulatorNode, ctx: Any, timeout_s: float = START_TIMEOUT_S) -> None:
    """Publish the first tick once a policy publishes controls and a preprocessor reads the camera.

    Every later tick answers a control, so without this first one a lockstep world never
    moves; sent before the pipeline is up, it would be lost (no transient-local camera).
    After ``timeout_s`` it starts anyway and says so.
    """
    deadline = time.monotonic() + timeout_s
    ros_node = ctx.node

    def check() -> None:
        if node.started:
            return
        ready = (ros_node.count_publishers(node.topics.control) > 0
                 and ros_node.count_subscribers(node.topics.camera) > 0)
        if not ready and time.monotonic() < deadline:
            return
        if not ready:
            ctx.logger.warning(f"{ctx.name}: no policy / camera_preprocessor after {timeout_s:.0f} s: starting anyway")
        ctx.logger.info(f"{ctx.name}: first tick (episode 1)")
        node.start()

    ctx.create_wall_timer(0.1, check)


def main(args: list[str] | None = None) -> int:
    """``ros2 run td3_drive simulator``: this node alone on rclpy; it ticks once the pipeline listens."""
    return run_node("simulator", SimulatorNode, args=args, started=start_when_listened)
