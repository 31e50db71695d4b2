"""CarlaEpisodeManager and its node against a fake ``carla`` module (no CARLA server, no ROS)."""
from __future__ import annotations

import fnmatch
import json
import types
from pathlib import Path

import pytest

from td3_drive import topics as T
from td3_drive.carla.episodes import CarlaEpisodeManager, EpisodeConfig, SpawnPoint, parse_spawn_points
from td3_drive.nodes.carla_episode_manager import CarlaEpisodeManagerNode
from td3_drive.runtime import messages
from td3_drive.runtime.local import LocalRuntime
from td3_drive.topics import Topics

from support import route

REPO = Path(__file__).resolve().parents[1]
OBJECTS = REPO / "config" / "objects.json"


# --------------------------------------------------------------------------- fake carla
class Vector3D:
    def __init__(self, x=0.0, y=0.0, z=0.0):
        self.x, self.y, self.z = x, y, z


class Location(Vector3D):
    pass


class Rotation:
    def __init__(self, pitch=0.0, yaw=0.0, roll=0.0):
        self.pitch, self.yaw, self.roll = pitch, yaw, roll


class Transform:
    def __init__(self, location=None, rotation=None):
        self.location, self.rotation = location or Location(), rotation or Rotation()


class VehicleControl:
    def __init__(self, throttle=0.0, steer=0.0, brake=0.0, hand_brake=False, reverse=False):
        self.throttle, self.steer, self.brake = throttle, steer, brake


class Actor:
    _next_id = 100

    def __init__(self, type_id, attributes, parent=None, transform=None):
        Actor._next_id += 1
        self.id = Actor._next_id
        self.type_id, self.attributes, self.parent = type_id, dict(attributes), parent
        self.is_alive = True
        self.calls: list[tuple] = []
        self.transform = transform
        self.fail_next: Exception | None = None

    def _call(self, name, *args):
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        self.calls.append((name, *args))

    def set_transform(self, t):
        self._call("set_transform", t)
        self.transform = t

    def set_target_velocity(self, v):
        self._call("set_target_velocity", v)

    def set_target_angular_velocity(self, v):
        self._call("set_target_angular_velocity", v)

    def apply_control(self, c):
        self._call("apply_control", c)

    def get_location(self):  # where carla_spawn_objects left it, until teleported
        return self.transform.location if self.transform is not None else Location(500, 500, 0)


class ActorList(list):
    def filter(self, pattern):
        return ActorList(a for a in self if fnmatch.fnmatch(a.type_id, pattern))


class Blueprint:
    def __init__(self, bp_id, attrs=()):
        self.id = bp_id
        self.attributes = {a: None for a in attrs}

    def has_attribute(self, key):
        return key in self.attributes or key == "role_name"

    def set_attribute(self, key, value):
        if not self.has_attribute(key):
            raise IndexError(key)
        self.attributes[key] = value


class Library:
    SENSOR_ATTRS = {
        "sensor.camera.rgb": ("image_size_x", "image_size_y", "fov"),
        "sensor.other.collision": (),
        "sensor.other.lane_invasion": (),
    }

    def filter(self, pattern):
        ids = ["vehicle.tesla.model3", "vehicle.audi.tt"]
        return [Blueprint(i) for i in ids if fnmatch.fnmatch(i, pattern)]

    def find(self, bp_id):
        if bp_id not in self.SENSOR_ATTRS:
            raise IndexError(f"blueprint {bp_id} not found")
        return Blueprint(bp_id, self.SENSOR_ATTRS[bp_id])


class World:
    def __init__(self):
        self.actors = ActorList()
        self.sim_time = 0.0
        self.spawned: list[Actor] = []
        # point 0 is carla_waypoint_publisher's default goal
        self.map_points = [Transform(Location(100, 100, 0.5), Rotation(yaw=90)), Transform(Location(-40, 0, 0.5)),
                           Transform(Location(20, 5, 0.5))]

    def get_actors(self):
        return ActorList(a for a in self.actors if a.is_alive)

    def get_map(self):
        return types.SimpleNamespace(get_spawn_points=lambda: list(self.map_points))

    def get_snapshot(self):
        return types.SimpleNamespace(timestamp=types.SimpleNamespace(elapsed_seconds=self.sim_time))

    def get_blueprint_library(self):
        return Library()

    def try_spawn_actor(self, bp, transform, attach_to=None):
        actor = Actor(bp.id, {k: v for k, v in bp.attributes.items() if v is not None}, attach_to, transform)
        self.actors.append(actor)
        self.spawned.append(actor)
        return actor


class Client:
    instances: list["Client"] = []

    def __init__(self, host, port, world, failures=None, server_version="0.9.16"):
        self.host, self.port, self.world = host, port, world
        self.timeout = None
        self.failures = failures if failures is not None else [0]  # shared across reconnects
        self.server_version = server_version
        Client.instances.append(self)

    def set_timeout(self, seconds):
        self.timeout = seconds

    def get_world(self):
        assert self.timeout is not None, "set_timeout must come before the first RPC"
        if self.failures[0] > 0:
            self.failures[0] -= 1
            raise RuntimeError("time-out of 5000ms while waiting for the simulator")
        return self.world

    def get_client_version(self):
        return "0.9.16"

    def get_server_version(self):
        return self.server_version


fake_carla = types.SimpleNamespace(
    Vector3D=Vector3D, Location=Location, Rotation=Rotation, Transform=Transform, VehicleControl=VehicleControl
)


class Log:
    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def info(self, m):
        self.lines.append(("info", m))

    def warning(self, m):
        self.lines.append(("warning", m))

    def error(self, m):
        self.lines.append(("error", m))

    def debug(self, m):
        self.lines.append(("debug", m))

    def has(self, level, text):
        return any(lv == level and text in m for lv, m in self.lines)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(world=None, *, fail_connects=0, server_version="0.9.16", with_ego=True, **cfg):
    world = world or World()
    if with_ego:
        world.actors.append(Actor("vehicle.tesla.model3", {"role_name": "ego_vehicle"}))
        world.actors.append(Actor("vehicle.audi.tt", {"role_name": "autopilot"}))
    log, clock = Log(), Clock()
    pseudo: list[tuple[dict, int]] = []
    failures = [fail_connects]
    cfg.setdefault("spawn_points", [SpawnPoint(1.0, 2.0, 0.0, 0.0, 0.0, 30.0)])
    cfg.setdefault("wait_for_route", False)  # the route tests below set it (the default) themselves
    manager = CarlaEpisodeManager(
        EpisodeConfig(**cfg),
        log,
        carla_module=fake_carla,
        client_factory=lambda h, p: Client(h, p, world, failures, server_version),
        wall_clock=clock,
        pseudo_spawner=lambda spec, parent: pseudo.append((spec, parent)),
    )
    return manager, world, log, clock, pseudo


def ego_of(world):
    return next(a for a in world.get_actors() if a.attributes.get("role_name") == "ego_vehicle")


# --------------------------------------------------------------------------- tests
def test_spawn_point_parsing_and_ros_to_carla_frame():
    assert SpawnPoint.parse("1, 2, 3, 4, 5, 6") == SpawnPoint(1, 2, 3, 4, 5, 6)
    assert SpawnPoint.parse("1,2,0.5,90") == SpawnPoint(1, 2, 0.5, yaw=90)
    assert parse_spawn_points(["", "1,2"]) == [SpawnPoint(1, 2)]
    with pytest.raises(ValueError):
        SpawnPoint.parse("1,2,3")
    t = SpawnPoint(1, 2, 3, 4, 5, 6).to_carla(fake_carla, lift=0.5)
    # carla_common.transforms: y, pitch and yaw change sign from ROS to CARLA
    assert (t.location.x, t.location.y, t.location.z) == (1, -2, 3.5)
    assert (t.rotation.roll, t.rotation.pitch, t.rotation.yaw) == (4, -5, -6)


def test_first_episode_teleports_and_starts_on_the_next_tick():
    manager, world, log, _, _ = make(lift_m=0.3, timeout_s=4.0)
    world.sim_time = 12.0
    manager.on_progress(12.0)
    manager.service()
    client = Client.instances[-1]
    assert client.timeout == 4.0
    ego = ego_of(world)
    names = [c[0] for c in ego.calls]
    assert names == ["apply_control", "set_transform", "set_target_velocity", "set_target_angular_velocity"]
    assert ego.calls[0][1].brake == 1.0 and ego.calls[0][1].throttle == 0.0
    t = ego.calls[1][1]
    assert (t.location.x, t.location.y, t.location.z, t.rotation.yaw) == (1.0, -2.0, pytest.approx(0.3), -30.0)
    v = ego.calls[2][1]
    assert (v.x, v.y, v.z) == (0, 0, 0)
    # not started until a tick after the teleport: a /clock already in flight does not count
    manager.on_progress(12.0)
    assert manager.poll_episode_start() is None
    manager.on_progress(12.05)
    start = manager.poll_episode_start()
    assert (start.episode, start.sim_time, start.reason) == (1, 12.05, "start")
    assert manager.poll_episode_start() is None
    assert log.has("info", "episode 1")


def test_reset_requests_are_deduplicated_and_stale_ones_ignored():
    manager, world, _, _, _ = make()
    manager.on_progress(1.0)
    manager.service()
    manager.on_progress(1.05)
    assert manager.poll_episode_start().episode == 1
    assert manager.request_reset("collision", 3.0)
    assert not manager.request_reset("lane_invasion", 3.0)  # same tick, reset already queued
    manager.service()
    assert not manager.request_reset("collision", 3.0)  # awaiting the first tick of episode 2
    manager.on_progress(3.05)
    start = manager.poll_episode_start()
    assert (start.episode, start.reason) == (2, "collision")
    assert not manager.request_reset("off_route", 3.0)  # stamped in episode 1: stale
    assert manager.request_reset("timeout", 3.1)


def test_unreachable_server_is_retried_without_raising():
    manager, world, log, clock, _ = make(fail_connects=2, retry_interval_s=2.0)
    manager.service()
    assert log.has("warning", "not reachable")
    assert manager.episode == 0
    clock.t += 1.0
    manager.service()  # inside the retry interval: no new attempt
    assert len([c for c in Client.instances if c.world is world]) == 1
    assert manager.episode == 0
    clock.t += 1.5
    manager.service()  # second failure
    clock.t += 2.5
    manager.service()  # connects and resets
    assert manager.episode == 1


def test_rpc_error_during_reset_reconnects_and_retries():
    manager, world, log, clock, _ = make()
    ego_of(world).fail_next = RuntimeError("time-out of 5000ms")
    manager.service()
    assert manager.episode == 0 and manager.client is None
    assert log.has("warning", "will reconnect")
    clock.t += 5
    manager.service()
    assert manager.episode == 1


def test_stall_triggers_a_logged_reset():
    manager, world, log, clock, _ = make(stall_timeout_s=10.0)
    manager.service()  # waiting for the bridge: no stall before the first tick
    clock.t += 60
    manager.service()
    assert not log.has("warning", "no /clock")
    manager.on_progress(5.0)
    manager.on_progress(5.05)
    assert manager.poll_episode_start().episode == 1
    clock.t += 11
    manager.service()
    assert log.has("warning", "no /clock or camera progress")
    assert manager.episode == 2
    manager.on_progress(5.10)
    assert manager.poll_episode_start().reason == "stalled"
    clock.t += 1
    manager.service()
    assert manager.episode == 2  # one reset per stall, not one per timer tick


def test_waits_for_carla_spawn_objects_instead_of_spawning_a_second_ego():
    manager, world, log, clock, _ = make(with_ego=False)
    manager.service()
    assert world.spawned == [] and manager.episode == 0
    assert log.has("info", "waiting for the ego vehicle")
    world.actors.append(Actor("vehicle.tesla.model3", {"role_name": "ego_vehicle"}))
    clock.t += 3
    manager.service()
    assert manager.episode == 1 and world.spawned == []


def test_ego_that_carla_spawn_objects_never_spawned_is_spawned_after_the_wait():
    """carla_spawn_objects exits when its random spawn point is occupied: after spawn_wait_s the
    manager spawns the ego itself, and a spawn that fails is retried at the next spawn point."""
    manager, world, log, clock, _ = make(with_ego=False, objects_file=str(OBJECTS), spawn_wait_s=60.0,
                                         spawn_points=[SpawnPoint(1, 2), SpawnPoint(-40, 2)], retry_interval_s=2.0)
    manager.service()
    clock.t += 30
    manager.service()
    assert world.spawned == [] and manager.episode == 0  # still inside the wait
    clock.t += 31
    blocked = world.try_spawn_actor
    world.try_spawn_actor = lambda bp, transform, attach_to=None: None  # the spawn point is occupied
    manager.service()
    assert manager.episode == 0 and log.has("warning", "not spawned within 60 s")
    world.try_spawn_actor = blocked
    clock.t += 3
    manager.service()
    assert manager.episode == 1
    vehicle = world.spawned[0]
    assert vehicle.attributes["role_name"] == "ego_vehicle" and vehicle.transform.location.x == -40


def test_destroyed_ego_is_respawned_with_its_sensors_from_objects_json():
    manager, world, log, clock, pseudo = make(objects_file=str(OBJECTS))
    manager.service()
    manager.on_progress(1.0)
    ego_of(world).is_alive = False  # e.g. destroyed by another client
    assert manager.request_reset("collision", 2.0)
    manager.service()
    assert manager.episode == 2
    spec = next(o for o in json.loads(OBJECTS.read_text())["objects"] if o["id"] == "ego_vehicle")
    vehicle = world.spawned[0]
    assert fnmatch.fnmatch(vehicle.type_id, spec["type"]) and vehicle.attributes["role_name"] == "ego_vehicle"
    sensors = {a.attributes["role_name"]: a for a in world.spawned[1:]}
    assert sensors["rgb_front"].type_id == "sensor.camera.rgb" and sensors["rgb_front"].parent is vehicle
    assert sensors["rgb_front"].attributes["image_size_x"] == "800"
    assert {"collision", "lane_invasion"} <= set(sensors)
    # bridge-side pseudo sensors go to the bridge's spawn service hook, attached to the new vehicle
    assert {s["type"] for s, _ in pseudo} >= {"sensor.pseudo.odom", "sensor.pseudo.speedometer"}
    assert all(parent == vehicle.id for _, parent in pseudo)


def test_map_spawn_points_and_seeded_random_order():
    manager, world, _, _, _ = make(spawn_points=[], spawn_order="cycle", lift_m=0.0)
    manager.service()
    assert ego_of(world).transform.location.x == -40  # point 0 is the route's goal: never a start
    a, *_ = make(spawn_points=[SpawnPoint(i, 0) for i in range(10)], spawn_order="random", seed=3)
    b, *_ = make(spawn_points=[SpawnPoint(i, 0) for i in range(10)], spawn_order="random", seed=3)
    for m in (a, b):
        m.service()
    xa = [a.next_spawn_point().location.x for _ in range(5)]
    xb = [b.next_spawn_point().location.x for _ in range(5)]
    assert xa == xb and len(set(xa)) > 1


def test_version_mismatch_is_reported():
    manager, _, log, _, _ = make(server_version="0.9.15")
    manager.service()
    assert log.has("error", "!= server 0.9.15")


def test_node_on_the_local_runtime_publishes_episode_starts():
    """teleport -> the old route (latched) -> goal published after the first tick at the new place ->
    the route planned from there: the episode starts at that route's stamp, never on the old one."""
    world = World()
    world.actors.append(Actor("vehicle.tesla.model3", {"role_name": "ego_vehicle"}))
    rt = LocalRuntime(parameters={"carla_episode_manager": {"spawn_points": ["3,4,0,0,0,0", "-30,4,0,0,0,0"],
                                                            "carla_port": 2010, "route_timeout_s": 5.0}})
    ctx = rt.context("carla_episode_manager")
    node = CarlaEpisodeManagerNode(ctx)
    assert ctx.undeclared_parameters() == []
    assert node.manager.config.port == 2010 and node.manager.config.spawn_points[0] == SpawnPoint(3, 4)
    # swap in the fake client: the node never touched CARLA while being built
    node.manager._carla = fake_carla
    node.manager._client_factory = lambda h, p: Client(h, p, world)
    clock = Clock()
    node.manager._clock = clock
    topics = Topics()
    starts, goals = [], []
    rt.add_tap(lambda topic, _t, msg, _now: starts.append(msg) if topic == topics.episode_start else None)
    rt.add_tap(lambda topic, _t, msg, _now: goals.append(msg) if topic == topics.goal else None)

    def tick(t):
        world.sim_time = t
        rt.publish(topics.clock, messages.new_message(T.CLOCK, clock=messages.stamp(t)))
        rt.spin()

    rt.publish(topics.route, route([(0, 0), (1, 0)], 0.02))  # planned at spawn, before any reset: latched
    tick(0.05)
    rt.advance(0.1)  # service timer: connect + first reset (teleport at t=0.05)
    assert node.manager.episode == 1 and starts == [] and goals == []
    tick(0.10)  # first tick at the new place: the goal goes out (the map's spawn point 0, in the ROS frame)
    assert len(goals) == 1 and goals[0].header.frame_id == "map"
    assert (goals[0].pose.position.x, goals[0].pose.position.y) == (100, -100)
    rt.publish(topics.route, route([(0, 0), (1, 0)], 0.05))  # stamped at the teleport: not after it
    tick(0.15)
    assert starts == []
    rt.publish(topics.route, route([(3, 4), (4, 4), (5, 4)], 0.15))  # planned from the new start
    rt.spin()
    assert [(s.frame_id, messages.seconds(s.stamp)) for s in starts] == [("1", pytest.approx(0.15))]
    assert len(goals) == 1  # once per episode

    rt.publish(topics.reset_request, messages.new_message(T.HEADER, stamp=messages.stamp(0.2), frame_id="collision"))
    rt.spin()
    assert node.manager.episode == 2
    for k in range(3):  # the planner never answers: the route timeout resets again, logged and counted
        tick(0.25 + 0.05 * k)
    clock.t += 6.0
    rt.advance(0.1)
    assert node.manager.route_timeouts == 1 and node.manager.episode == 3 and starts[-1].frame_id == "1"
    tick(0.5)
    rt.publish(topics.route, route([(-30, 4), (-29, 4)], 0.5))
    rt.spin()
    assert [s.frame_id for s in starts] == ["1", "3"] and rt.topic_types()[topics.goal] == T.POSE_STAMPED


def test_never_starts_at_the_route_goal():
    """carla_waypoint_publisher's goal is the map's spawn point 0: starting there gives a degenerate
    route that is completed on the first step."""
    manager, world, log, _, _ = make(spawn_points=[], lift_m=0.0)
    manager.service()
    assert manager.episode == 1
    starts = {ego_of(world).transform.location.x}
    for k in range(6):
        manager.on_progress(10.0 + k)
        assert manager.poll_episode_start() is not None
        assert manager.request_reset("timeout", 10.0 + k)
        manager.service()
        starts.add(ego_of(world).transform.location.x)
    assert 100 not in starts and starts == {-40, 20}
    # every spawn point near the goal: a clear error, no episode, and no reconnect loop
    near, world2, log2, _, _ = make(spawn_points=[SpawnPoint(95, -95)])
    near.service()
    assert near.episode == 0 and near.client is not None and log2.has("error", "from the route goal")
