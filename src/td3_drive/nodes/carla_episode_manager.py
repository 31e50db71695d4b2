"""carla_episode_manager: resets the CARLA ego vehicle on request and starts episodes.

Subscribes ``/td3/reset_request`` (std_msgs/Header, frame_id = reason), ``/clock``
and the route (``/carla/<role>/waypoints``); publishes the route goal
(``/carla/<role>/goal``, geometry_msgs/PoseStamped) after each teleport, so
carla_waypoint_publisher plans from the new start, and ``/td3/episode_start``
(std_msgs/Header, stamp = that route's stamp: the episode's first tick is the first
at or after it; frame_id = episode number, latched).  All CARLA work is in
:mod:`td3_drive.carla.episodes`; this is wiring only.  Nothing touches CARLA in the
constructor, so the node also builds on the in-process runtime.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from td3_drive import topics as T
from td3_drive.carla.episodes import CarlaEpisodeManager, EpisodeConfig, SpawnPoint, parse_spawn_points
from td3_drive.runtime import messages
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS, NodeContext, yaw_quaternion
from td3_drive.runtime.node import Node
from td3_drive.runtime.ros import run_node
from td3_drive.settings import setting

SPAWN_OBJECT_SERVICE = "/carla/spawn_object"


@dataclass
class CarlaEpisodeManagerConfig:
    """The node's parameters; :meth:`episode_config` is what the manager gets of them."""

    carla_host: str = setting("localhost", "CARLA server host")
    carla_port: int = setting(2000, "CARLA server RPC port")
    carla_timeout_s: float = setting(5.0, "client.set_timeout: bound on every CARLA call (s)")
    spawn_points: list = setting([""], "episode start poses 'x,y,z,roll,pitch,yaw' (ROS frame, deg); "
                                       "empty: the map's spawn points")
    spawn_order: str = setting("cycle", "cycle | random")
    seed: int = setting(0, "seed for spawn_order random")
    stall_timeout_s: float = setting(10.0, "no /clock progress for this long (wall s) -> reset")
    retry_interval_s: float = setting(2.0, "wait between reconnect / reset retries (wall s)")
    objects_definition_file: str = setting("", "carla_spawn_objects JSON, for respawning the ego")
    respawn: bool = setting(True, "respawn the ego (and sensors) if it was destroyed")
    spawn_wait_s: float = setting(60.0, "wall s to wait for carla_spawn_objects' ego before spawning it")
    wait_for_route: bool = setting(True, "start an episode at the first route planned after the teleport "
                                         "(false: at the first tick after it)")
    route_timeout_s: float = setting(30.0, "wall s to wait for that route before resetting again")
    goal: str = setting("", "route goal 'x,y,z,roll,pitch,yaw' (ROS frame, deg); empty: the map's spawn point 0")
    min_goal_distance_m: float = setting(30.0, "spawn points nearer the goal are never used")
    service_period_s: float = setting(0.1, "watchdog / reset service period (wall s)")
    watch_camera: bool = setting(False, "also count camera frames as progress (costs a camera copy)")

    def episode_config(self, role_name: str) -> EpisodeConfig:
        """ValueError on a spawn order or pose the manager cannot use."""
        if self.spawn_order not in ("cycle", "random"):
            raise ValueError(f"spawn_order must be 'cycle' or 'random', got {self.spawn_order!r}")
        return EpisodeConfig(
            host=self.carla_host, port=self.carla_port, timeout_s=self.carla_timeout_s, role_name=role_name,
            spawn_points=parse_spawn_points(self.spawn_points), spawn_order=self.spawn_order, seed=self.seed,
            stall_timeout_s=self.stall_timeout_s, retry_interval_s=self.retry_interval_s,
            objects_file=self.objects_definition_file, respawn=self.respawn, spawn_wait_s=self.spawn_wait_s,
            wait_for_route=self.wait_for_route, route_timeout_s=self.route_timeout_s,
            goal=(parse_spawn_points([self.goal]) or [None])[0], min_goal_distance_m=self.min_goal_distance_m)


class CarlaEpisodeManagerNode(Node):
    """Wiring around :class:`CarlaEpisodeManager`."""

    def __init__(self, ctx: NodeContext, *, manager: CarlaEpisodeManager | None = None) -> None:
        super().__init__(ctx)
        c = self.declare_config(CarlaEpisodeManagerConfig)
        config = c.episode_config(self.topics.role_name)  # refuses what the manager could not use
        self.manager = manager or CarlaEpisodeManager(config, ctx.logger, pseudo_spawner=_bridge_pseudo_spawner(ctx))
        self._episode_pub = ctx.create_publisher(T.HEADER, self.topics.episode_start, LATCHED_QOS)
        self._goal_pub = ctx.create_publisher(T.POSE_STAMPED, self.topics.goal, RELIABLE_QOS)
        ctx.create_subscription(T.HEADER, self.topics.reset_request, self._on_reset_request, RELIABLE_QOS)
        ctx.create_subscription(T.CLOCK, self.topics.clock, self._on_clock, RELIABLE_QOS)
        ctx.create_subscription(T.PATH, self.topics.route, self._on_route, LATCHED_QOS)
        if c.watch_camera:
            ctx.create_subscription(T.IMAGE, self.topics.camera, self._on_camera, SENSOR_QOS)
        # wall clock where the runtime has one: a sim-time timer stops exactly when /clock stalls
        wall_timer: Callable[[float, Callable[[], None]], None] = getattr(ctx, "create_wall_timer", ctx.create_timer)
        wall_timer(c.service_period_s, self.manager.service)

    def _on_reset_request(self, msg: Any) -> None:
        reason = msg.frame_id or "unspecified"
        if self.manager.request_reset(reason, messages.seconds(msg.stamp)):
            self.ctx.logger.info(f"reset requested: {reason}")
            self.manager.service()  # act now rather than on the next watchdog tick

    def _on_clock(self, msg: Any) -> None:
        self._progress(messages.seconds(msg.clock))

    def _on_camera(self, msg: Any) -> None:
        self._progress(messages.seconds(msg.header.stamp))

    def _on_route(self, msg: Any) -> None:
        self.manager.on_route(messages.seconds(msg.header.stamp), len(msg.poses))
        self._publish_start()

    def _progress(self, sim_time: float) -> None:
        self.manager.on_progress(sim_time)
        goal = self.manager.poll_goal()
        if goal is not None:
            self._publish_goal(goal, sim_time)
        self._publish_start()

    def _publish_goal(self, goal: SpawnPoint, sim_time: float) -> None:
        new = self.ctx.new
        pose = new("geometry_msgs/msg/Pose", position=new("geometry_msgs/msg/Point", x=goal.x, y=goal.y, z=goal.z),
                   # roll and pitch of a goal do not matter to the planner
                   orientation=yaw_quaternion(self.ctx, math.radians(goal.yaw)))
        header = new(T.HEADER, stamp=messages.stamp(sim_time), frame_id="map")
        self._goal_pub.publish(new(T.POSE_STAMPED, header=header, pose=pose))

    def _publish_start(self) -> None:
        start = self.manager.poll_episode_start()
        if start is not None:
            header = self.ctx.new(T.HEADER, stamp=messages.stamp(start.sim_time), frame_id=str(start.episode))
            self._episode_pub.publish(header)
            self.ctx.logger.info(f"episode {start.episode} started at t={start.sim_time:.2f} s ({start.reason})")


def _bridge_pseudo_spawner(ctx: Any) -> Callable[[dict, int], None] | None:
    """Respawn bridge-side pseudo sensors (odometry, speedometer) through /carla/spawn_object, if on rclpy."""
    node = getattr(ctx, "node", None)
    if node is None:
        return None
    try:
        from carla_msgs.srv import SpawnObject
        from diagnostic_msgs.msg import KeyValue
    except ImportError:
        return None
    client = node.create_client(SpawnObject, SPAWN_OBJECT_SERVICE)

    def spawn(spec: dict, parent_id: int) -> None:
        if not client.service_is_ready():
            ctx.logger.warning(f"{SPAWN_OBJECT_SERVICE} not available: {spec.get('type')} not respawned")
            return
        request = SpawnObject.Request()
        request.type = str(spec.get("type", ""))
        request.id = str(spec.get("id", ""))
        request.attach_to = int(parent_id)
        request.random_pose = False
        request.transform.orientation.w = 1.0
        request.attributes = [
            KeyValue(key=str(k), value=str(v))
            for k, v in spec.items()
            if k not in ("type", "id", "spawn_point", "attached_objects")
        ]
        client.call_async(request)  # never block a callback on the bridge

    return spawn


def main(args: list[str] | None = None) -> int:
    """``ros2 run td3_drive carla_episode_manager``: this node alone on rclpy."""
    # the CARLA watchdog timer may wait on RPC timeouts; keep it off the subscription group
    return run_node("carla_episode_manager", CarlaEpisodeManagerNode, args=args, parallel_timers=True)
