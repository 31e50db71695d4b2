"""CARLA episode management through the ``carla`` Python client (no ROS here).

Why the client and not bridge services: carla-ros-bridge (ROS 2) offers
``/carla/spawn_object`` and ``/carla/destroy_object`` services and, only when
an ``actor.pseudo.control`` child is spawned, fire-and-forget
``control/set_transform`` / ``control/set_target_velocity`` topics.  There is
no reset or teleport *service* for the ego vehicle: nothing that moves it,
zeroes its velocity and reports success or failure.  Respawning through the
services destroys the sensors and re-registers every topic, which costs
seconds and drops latched subscriptions.  The client does the reset directly:
``set_transform`` + zero ``set_target_velocity`` / ``set_target_angular_velocity``
+ a braking control, each call bounded by ``client.set_timeout``.  The
bridge stays the only one that ticks the world (we never call
``world.tick()``), so lockstep synchronous mode is untouched.

The ``carla`` module is imported lazily and can be injected, so the whole
class runs in tests against a fake.  Every CARLA call is bounded by the
client's timeout; errors are logged and retried on the next ``service()``,
never raised into the ROS executor.
"""
from __future__ import annotations

import json
import math
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol


class Log(Protocol):
    def info(self, msg: str) -> None: ...
    def warning(self, msg: str) -> None: ...
    def error(self, msg: str) -> None: ...


@dataclass(frozen=True)
class SpawnPoint:
    """A pose in the ROS map frame (x forward, y left, degrees), as carla_spawn_objects' ``spawn_point_<id>``."""

    x: float
    y: float
    z: float = 0.0
    roll: float = 0.0
    pitch: float = 0.0
    yaw: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "SpawnPoint":
        """'x,y,z,roll,pitch,yaw' (the bridge's format); 'x,y,z,yaw' and 'x,y' are accepted too."""
        parts = [float(p) for p in text.replace(" ", "").split(",") if p]
        if len(parts) == 6:
            return cls(*parts)
        if len(parts) == 4:
            return cls(parts[0], parts[1], parts[2], yaw=parts[3])
        if len(parts) == 2:
            return cls(parts[0], parts[1])
        raise ValueError(f"spawn point {text!r}: expected 'x,y,z,roll,pitch,yaw'")

    @classmethod
    def from_carla(cls, transform: Any) -> "SpawnPoint":
        """From a carla.Transform (left-handed: y, pitch and yaw change sign)."""
        loc, rot = transform.location, transform.rotation
        return cls(loc.x, -loc.y, loc.z, rot.roll, -rot.pitch, -rot.yaw)

    def to_carla(self, carla: Any, lift: float = 0.0) -> Any:
        """carla.Transform: CARLA is left-handed, so y, pitch and yaw change sign (as carla_common.transforms)."""
        return carla.Transform(
            carla.Location(x=self.x, y=-self.y, z=self.z + lift),
            carla.Rotation(roll=self.roll, pitch=-self.pitch, yaw=-self.yaw),
        )


@dataclass
class EpisodeConfig:
    host: str = "localhost"
    port: int = 2000
    timeout_s: float = 5.0
    role_name: str = "ego_vehicle"
    spawn_points: list[SpawnPoint] = field(default_factory=list)
    #: 'cycle' through the spawn points, or 'random' (seeded)
    spawn_order: str = "cycle"
    seed: int = 0
    #: no /clock or camera progress for this long (wall seconds) -> log and reset
    stall_timeout_s: float = 10.0
    #: wait this long (wall seconds) between reconnection / failed-reset attempts
    retry_interval_s: float = 2.0
    #: carla_spawn_objects JSON, used to respawn the ego and its sensors if it was destroyed
    objects_file: str = ""
    #: teleport slightly above the spawn point so the wheels do not start inside the road
    lift_m: float = 0.3
    #: the vehicle blueprint used for a respawn when objects_file names none
    vehicle_filter: str = "vehicle.tesla.model3"
    #: respawn the ego if it disappears after it was seen (never before: carla_spawn_objects spawns it)
    respawn: bool = True
    #: wall seconds to wait for carla_spawn_objects' ego before spawning it here (its random spawn point
    #: can be occupied, and it exits on the failure); spawns that fail are retried at the next point
    spawn_wait_s: float = 60.0
    #: start an episode only once a route planned after the teleport has arrived; the manager asks for it
    #: by publishing the goal after the first tick at the new place (carla_waypoint_publisher re-plans on
    #: a goal, which takes seconds).  False: the episode starts at the first tick after the teleport
    wait_for_route: bool = True
    #: the route goal (ROS frame); None: the map's spawn point 0, carla_waypoint_publisher's default
    goal: SpawnPoint | None = None
    #: wall seconds to wait for that route before resetting again from the next spawn point
    route_timeout_s: float = 30.0
    #: spawn points closer than this to the route goal are never used: a start at the goal gives a
    #: degenerate route, completed on step 1
    min_goal_distance_m: float = 30.0


@dataclass
class EpisodeStart:
    episode: int
    sim_time: float
    reason: str


class NoSpawnPoint(RuntimeError):
    """No configured or map spawn point may start an episode."""


class CarlaEpisodeManager:
    """Resets the ego vehicle between episodes and watches for a stalled simulation.

    Driven by five calls: :meth:`request_reset` (a reset request arrived),
    :meth:`on_progress` (a /clock or camera message arrived, with sim time),
    :meth:`on_route` (carla_waypoint_publisher's route arrived, with its stamp),
    :meth:`service` (periodic, wall clock: connects, performs pending resets,
    detects stalls and routes that never come), :meth:`poll_goal` (a route goal to
    publish) and :meth:`poll_episode_start` (an episode start to publish).

    With ``wait_for_route`` an episode starts at the stamp of the first route planned
    after its teleport (the previous route, latched and stamped before it, would score
    the first steps against the old start).  carla_waypoint_publisher re-plans on its own
    only when the ego jumps more than 2 m, so the manager publishes the goal once the
    first tick at the new place is out (the planner reads the ego's location of the last
    tick); the nodes take a route stamped at or after the announced start as the episode's.
    """

    def __init__(
        self,
        config: EpisodeConfig,
        log: Log,
        *,
        carla_module: Any = None,
        client_factory: Callable[[str, int], Any] | None = None,
        wall_clock: Callable[[], float] = time.monotonic,
        pseudo_spawner: Callable[[dict, int], None] | None = None,
    ) -> None:
        self.config = config
        self._log = log
        self._carla = carla_module
        self._client_factory = client_factory
        self._clock = wall_clock
        self._pseudo_spawner = pseudo_spawner
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()  # service() (timer) and request_reset() (subscription) may run in parallel
        self.client: Any = None
        self.world: Any = None
        self.episode = 0
        self._spawn_index = 0
        self._next_attempt = 0.0
        self._pending_reason: str | None = "start"  # the first episode starts once connected
        self._awaiting_start: tuple[int, float, str] | None = None  # episode, reset sim time, reason
        self._awaiting_since = 0.0  # wall time of that teleport
        self._goal_due = False  # publish the goal now: the first tick after the teleport is out
        self._goal_sent = True  # the goal of the current reset went out (once per reset)
        self.route_timeouts = 0  # resets because no fresh route came within route_timeout_s
        self._map_spawn_points: list | None = None  # cached per connection
        self._ready: list[EpisodeStart] = []
        self._last_progress_wall = wall_clock()
        self._last_sim_time = -math.inf
        self._episode_start_time = -math.inf
        self._version_checked = False
        self._seen_ego = False
        self._waiting_since: float | None = None  # wall time of the first reset that found no ego

    # ------------------------------------------------------------------ inputs
    def request_reset(self, reason: str, stamp_s: float | None = None) -> bool:
        """Queue a reset; stale or duplicate requests are ignored. Returns whether it was accepted."""
        with self._lock:
            if self._pending_reason is not None or self._awaiting_start is not None:
                return False  # a reset is already under way (collision + lane invasion in one tick)
            if stamp_s is not None and stamp_s < self._episode_start_time:
                return False  # sent during the previous episode, already handled
            self._pending_reason = reason or "unspecified"
            return True

    def on_progress(self, sim_time_s: float) -> None:
        """A /clock tick or a camera frame: the simulation is alive."""
        with self._lock:
            self._last_progress_wall = self._clock()
            if sim_time_s > self._last_sim_time:
                self._last_sim_time = sim_time_s
            if self._awaiting_start is not None and sim_time_s > self._awaiting_start[1] + 1e-6:
                if self.config.wait_for_route:
                    self._goal_due = not self._goal_sent  # the ego is at its new place: plan from there
                else:  # the first tick after the teleport is the first tick of the new episode
                    self._start_episode(sim_time_s)

    def poll_goal(self) -> SpawnPoint | None:
        """The route goal (ROS frame) to publish on /carla/<role>/goal, once per episode."""
        with self._lock:
            if not self._goal_due or not self._connected():
                return None
            self._goal_due, self._goal_sent = False, True
            try:
                return self.goal()
            except Exception as exc:
                self._disconnect(exc)
                return None

    def goal(self) -> SpawnPoint:
        """The configured goal, else the map's spawn point 0 (carla_waypoint_publisher's default)."""
        if self.config.goal is not None:
            return self.config.goal
        points = self.map_spawn_points()
        if not points:
            raise NoSpawnPoint("the map has no spawn points: configure a goal")
        return SpawnPoint.from_carla(points[0])

    def on_route(self, stamp_s: float, num_poses: int) -> None:
        """A route arrived (latched, so the previous one too): planned after the teleport, it starts the episode."""
        with self._lock:
            if self._awaiting_start is None or not self.config.wait_for_route:
                return
            if stamp_s > self._awaiting_start[1] + 1e-6 and num_poses >= 2:
                self._start_episode(stamp_s)

    def _start_episode(self, sim_time_s: float) -> None:
        episode, _, reason = self._awaiting_start
        self._awaiting_start, self._goal_due = None, False
        self._episode_start_time = sim_time_s
        self._ready.append(EpisodeStart(episode, sim_time_s, reason))

    def poll_episode_start(self) -> EpisodeStart | None:
        with self._lock:
            return self._ready.pop(0) if self._ready else None

    # ------------------------------------------------------------------ periodic work
    def service(self) -> None:
        """Connect if needed, perform a pending reset, detect stalls. Never raises."""
        with self._lock:
            now = self._clock()
            stalled_for = now - self._last_progress_wall
            # only once the simulation has ticked at all: before that we are just waiting for the bridge
            if self._last_sim_time > -math.inf and stalled_for > self.config.stall_timeout_s:
                self._log.warning(
                    f"no /clock or camera progress for {stalled_for:.1f} s "
                    f"(bridge stalled, CARLA hung, or sync mode waiting on a control): resetting the episode"
                )
                self._last_progress_wall = now  # one stall reset per timeout, not one per timer tick
                self._awaiting_start = None
                self._pending_reason = "stalled"
            if (self.config.wait_for_route and self._awaiting_start is not None
                    and now - self._awaiting_since > self.config.route_timeout_s):
                self.route_timeouts += 1
                self._log.warning(
                    f"no route planned after the reset within {self.config.route_timeout_s:.0f} s "
                    f"(is carla_waypoint_publisher running for {self.config.role_name!r}?): "
                    f"resetting from the next spawn point ({self.route_timeouts} so far)"
                )
                self._awaiting_start = None
                self._pending_reason = "no_route"
            if self._pending_reason is None or now < self._next_attempt:
                return
            if not self._connected() and not self._connect():
                self._next_attempt = now + self.config.retry_interval_s
                return
            if self._reset(self._pending_reason):
                self._pending_reason = None
            else:
                self._next_attempt = now + self.config.retry_interval_s

    # ------------------------------------------------------------------ CARLA
    def _carla_module(self) -> Any:
        if self._carla is None:
            import carla  # version-matched to the server; see docs/ros2.md

            self._carla = carla
        return self._carla

    def _connected(self) -> bool:
        return self.client is not None and self.world is not None

    def _connect(self) -> bool:
        try:
            carla = self._carla_module()
            factory = self._client_factory or carla.Client
            client = factory(self.config.host, self.config.port)
            client.set_timeout(self.config.timeout_s)  # bounds every RPC below: no call can hang forever
            world = client.get_world()
        except Exception as exc:  # carla raises RuntimeError on timeouts; ImportError without the wheel
            self._log.warning(f"CARLA {self.config.host}:{self.config.port} not reachable: {exc}; retrying")
            self.client = self.world = None
            return False
        self.client, self.world = client, world
        self._check_versions()
        self._log.info(f"connected to CARLA at {self.config.host}:{self.config.port}")
        return True

    def _check_versions(self) -> None:
        if self._version_checked:
            return
        self._version_checked = True
        try:
            client_v, server_v = self.client.get_client_version(), self.client.get_server_version()
        except Exception as exc:
            self._log.warning(f"could not read CARLA versions: {exc}")
            return
        if str(client_v).split("-")[0] != str(server_v).split("-")[0]:
            self._log.error(
                f"carla client {client_v} != server {server_v}: install the matching 'carla' wheel "
                "(the bridge exits on the same mismatch)"
            )

    def _disconnect(self, why: Exception) -> None:
        self._log.warning(f"CARLA call failed ({why}); will reconnect and retry")
        self.client = self.world = None
        self._map_spawn_points = None

    def find_ego(self) -> Any:
        """The live vehicle whose role_name attribute is ours, or None."""
        for actor in self.world.get_actors().filter("vehicle.*"):
            if actor.attributes.get("role_name") == self.config.role_name and getattr(actor, "is_alive", True):
                return actor
        return None

    def map_spawn_points(self) -> list:
        """The map's recommended spawn points (carla.Transform), read once per connection."""
        if self._map_spawn_points is None:
            self._map_spawn_points = list(self.world.get_map().get_spawn_points())
        return self._map_spawn_points

    def next_spawn_point(self) -> Any:
        """A carla.Transform: configured spawn points first, else the map's recommended ones;
        never one within ``min_goal_distance_m`` of the route goal."""
        carla = self._carla_module()
        points = self.config.spawn_points or [SpawnPoint.from_carla(t) for t in self.map_spawn_points()]
        goal = self.goal()
        usable = [p for p in points if math.hypot(p.x - goal.x, p.y - goal.y) >= self.config.min_goal_distance_m]
        if not usable:
            raise NoSpawnPoint(f"no spawn point is {self.config.min_goal_distance_m} m from the route goal "
                               f"({goal.x:.1f}, {goal.y:.1f}): configure spawn_points or the goal")
        return self._pick(usable).to_carla(carla, self.config.lift_m)

    def _pick(self, items: list) -> Any:
        if self.config.spawn_order == "random":
            return items[self._rng.randrange(len(items))]
        item = items[self._spawn_index % len(items)]
        self._spawn_index += 1
        return item

    def _reset(self, reason: str) -> bool:
        carla = self._carla_module()
        try:
            ego = self.find_ego()
            transform = self.next_spawn_point()
            if ego is None and not self._seen_ego:
                now = self._clock()
                self._waiting_since = now if self._waiting_since is None else self._waiting_since
                if not self.config.respawn or now - self._waiting_since < self.config.spawn_wait_s:
                    # carla_spawn_objects has not spawned it yet: spawning one here would make two
                    self._log.info(f"waiting for the ego vehicle {self.config.role_name!r} to be spawned")
                    return False
            if ego is None and not self.config.respawn:
                self._log.warning(f"ego vehicle {self.config.role_name!r} is gone and respawn is off")
                return False
            if ego is None:
                self._log.warning(f"ego vehicle {self.config.role_name!r} "
                                  + ("was destroyed" if self._seen_ego else
                                     f"not spawned within {self.config.spawn_wait_s:.0f} s") + ": spawning it")
                ego = self._respawn(transform)
                if ego is None:
                    return False
            else:
                zero = carla.Vector3D(x=0.0, y=0.0, z=0.0)
                ego.apply_control(carla.VehicleControl(throttle=0.0, steer=0.0, brake=1.0))
                ego.set_transform(transform)
                ego.set_target_velocity(zero)
                ego.set_target_angular_velocity(zero)
            snapshot = self.world.get_snapshot()
            reset_time = float(snapshot.timestamp.elapsed_seconds)
        except NoSpawnPoint as exc:  # configuration, not connection: say so, retry in case the ego moves
            self._log.error(str(exc))
            return False
        except Exception as exc:
            self._disconnect(exc)
            return False
        self._seen_ego = True
        self.episode += 1
        # the sim time may have moved past the snapshot already; whichever is later bounds "before"
        self._awaiting_start = (self.episode, max(reset_time, self._last_sim_time), reason)
        self._awaiting_since = self._clock()
        self._goal_sent = False
        loc = transform.location
        self._log.info(f"episode {self.episode}: reset ({reason}) to x={loc.x:.1f} y={-loc.y:.1f} (ROS frame)")
        return True

    # ------------------------------------------------------------------ respawn
    def _objects(self) -> dict:
        path = Path(self.config.objects_file) if self.config.objects_file else None
        if path is None or not path.is_file():
            return {}
        for obj in json.loads(path.read_text()).get("objects", []):
            if obj.get("id") == self.config.role_name and str(obj.get("type", "")).startswith("vehicle"):
                return obj
        return {}

    def _respawn(self, transform: Any) -> Any:
        """Spawn the ego and its sensors as carla_spawn_objects would (role_name = id); None on failure."""
        carla = self._carla_module()
        spec = self._objects()
        library = self.world.get_blueprint_library()
        vehicle_type = spec.get("type", self.config.vehicle_filter)
        blueprints = list(library.filter(vehicle_type))
        if not blueprints:
            self._log.error(f"no vehicle blueprint matches {vehicle_type!r}")
            return None
        blueprint = blueprints[0]
        blueprint.set_attribute("role_name", self.config.role_name)
        ego = self.world.try_spawn_actor(blueprint, transform)
        if ego is None:
            self._log.warning("respawn blocked at the spawn point (occupied?); trying the next one later")
            return None
        for sensor in spec.get("sensors", []):
            self._spawn_sensor(carla, library, sensor, ego)
        return ego

    def _spawn_sensor(self, carla: Any, library: Any, sensor: dict, parent: Any) -> None:
        sensor_type, sensor_id = str(sensor.get("type", "")), str(sensor.get("id", ""))
        if sensor_type.startswith("sensor.pseudo") or sensor_type.startswith("actor.pseudo"):
            # pseudo sensors (odometry, speedometer) exist only inside the bridge
            if self._pseudo_spawner is not None:
                self._pseudo_spawner(sensor, parent.id)
            else:
                self._log.warning(f"{sensor_type} '{sensor_id}' is bridge-side; restart carla_spawn_objects for it")
            return
        try:
            blueprint = library.find(sensor_type)
        except Exception as exc:
            self._log.error(f"sensor {sensor_type}: {exc}")
            return
        blueprint.set_attribute("role_name", sensor_id)  # the bridge names topics after it
        for key, value in sensor.items():
            if key in ("type", "id", "spawn_point", "attached_objects"):
                continue
            if blueprint.has_attribute(key):
                blueprint.set_attribute(key, str(value))
        sp = sensor.get("spawn_point", {})
        pose = SpawnPoint(
            float(sp.get("x", 0.0)), float(sp.get("y", 0.0)), float(sp.get("z", 0.0)),
            float(sp.get("roll", 0.0)), float(sp.get("pitch", 0.0)), float(sp.get("yaw", 0.0)),
        )
        if self.world.try_spawn_actor(blueprint, pose.to_carla(carla), attach_to=parent) is None:
            self._log.error(f"could not attach sensor {sensor_type} '{sensor_id}'")


def parse_spawn_points(texts: list[str]) -> list[SpawnPoint]:
    """Parameter strings -> spawn points (empty strings are skipped)."""
    return [SpawnPoint.parse(t) for t in texts if t and t.strip()]
