"""The embedded simulator: images, determinism, frames and signs, events, and the lockstep node."""
from __future__ import annotations

import math

import numpy as np
import pytest

from td3_drive import topics as T
from td3_drive.runtime.local import LocalRuntime
from td3_drive.sim.node import SimulatorNode
from td3_drive.sim.racetrack import (
    LANE_MARKING_BROKEN,
    LANE_MARKING_SOLID,
    OTHER_ACTOR_ID_BASE,
    RacetrackSim,
    SimConfig,
    sanitize_control,
)
from td3_drive.topics import Topics

# seeds whose ego starts in the left (0) / right (1) lane of racetrack-v1
LEFT_LANE_SEED, RIGHT_LANE_SEED = 1, 0


@pytest.fixture(scope="module")
def sim() -> RacetrackSim:
    return RacetrackSim(SimConfig())


@pytest.fixture(scope="module")
def moving_sim() -> RacetrackSim:
    """Starts at 8 m/s so manoeuvres happen within a few ticks."""
    return RacetrackSim(SimConfig(initial_speed=8.0, other_vehicles=0))


def _drive(sim: RacetrackSim, controls) -> list:
    return [sim.step(*c) for c in controls]


def _signed_offset(route: np.ndarray, x: float, y: float) -> float:
    """Lateral offset from the route, + = left, by the 2D cross product with the route tangent."""
    p = np.array([x, y])
    i = int(np.argmin(np.linalg.norm(route - p, axis=1)))
    i = min(i, len(route) - 2)
    tangent = route[i + 1] - route[i]
    d = p - route[i]
    return float(tangent[0] * d[1] - tangent[1] * d[0]) / float(np.linalg.norm(tangent))


# --- images -------------------------------------------------------------------------------
def test_frames_are_bgra_not_blank_and_change_when_moving(sim: RacetrackSim) -> None:
    first = sim.reset(3)
    image = first.image_bgra
    assert image.shape == (120, 160, 4) and image.dtype == np.uint8
    assert (image[:, :, 3] == 255).all()
    assert image[:, :, :3].std() > 20  # road, markings, grass: far from a blank frame
    assert (image[:, :, :3].min(axis=2) > 180).sum() > 50  # white lane markings are visible
    # the ego (green, BGR) sits centred horizontally, 75 % down the image
    b, g, r = image[90, 80, :3]
    assert g > 150 and r < 120 and b < 60
    frames = _drive(sim, [(1.0, 0.0, 0.0)] * 40)
    assert frames[-1].speed > 3.0
    assert not np.array_equal(frames[-1].image_bgra, image)


# --- determinism -----------------------------------------------------------------------------
def _episode(sim: RacetrackSim, seed: int, steps: int = 30) -> list:
    frames = [sim.reset(seed)]
    for k in range(steps):
        frames.append(sim.step(0.7, 0.3 * math.sin(k / 5.0), 0.0))
    return frames


def _same(a, b) -> bool:
    return all(
        np.array_equal(fa.image_bgra, fb.image_bgra)
        and (fa.x, fa.y, fa.yaw, fa.speed) == (fb.x, fb.y, fb.yaw, fb.speed)
        for fa, fb in zip(a, b)
    )


def test_reset_seed_is_deterministic_and_independent_of_earlier_episodes(sim: RacetrackSim) -> None:
    other = RacetrackSim(SimConfig())
    reference = _episode(other, 5)
    _episode(sim, 11, steps=10)  # an unrelated earlier episode must not leak into the next
    again = _episode(sim, 5)
    assert _same(reference, again)
    assert np.array_equal(other.route(), sim.route())
    different = _episode(sim, 6)
    assert not _same(reference, different)


# --- frames and signs ------------------------------------------------------------------------
def test_route_is_a_lap_of_the_start_lane_in_the_ego_frame(sim: RacetrackSim) -> None:
    frame = sim.reset(RIGHT_LANE_SEED)
    route = sim.route()
    steps = np.linalg.norm(np.diff(route, axis=0), axis=1)
    assert route.ndim == 2 and route.shape[1] == 2
    # 1 m along the lane centre; chords shorten a little at the track's sloppy segment joins
    assert np.all(steps > 0.8) and np.all(steps <= 1.0 + 1e-9) and np.median(steps) == pytest.approx(1.0, abs=0.01)
    assert abs(steps.sum() - sim.lap_length_m) < 1.5
    assert np.linalg.norm(route[-1] - route[0]) < 2.0  # a lap closes
    assert np.linalg.norm(route[0] - [frame.x, frame.y]) < 0.5  # starts at the ego
    tangent = (route[1] - route[0]) / np.linalg.norm(route[1] - route[0])
    assert tangent @ [math.cos(frame.yaw), math.sin(frame.yaw)] > 0.99
    # every waypoint lies on a lane centre of the ego's starting lane: offset from it is ~0
    assert abs(_signed_offset(route, *route[len(route) // 2])) < 1e-6


@pytest.mark.parametrize("steer, sign", [(-0.4, 1.0), (0.4, -1.0)])
def test_steer_left_gives_positive_lateral_offset(moving_sim: RacetrackSim, steer: float, sign: float) -> None:
    start = moving_sim.reset(RIGHT_LANE_SEED)
    route = moving_sim.route()
    start_lane = moving_sim.env.road.network.get_lane(moving_sim.env.vehicle.lane_index)
    frames = _drive(moving_sim, [(0.3, steer, 0.0)] * 8 + [(0.3, 0.0, 0.0)] * 4)
    end = frames[-1]
    # CARLA: steer < 0 is left; ROS: left is +y of the vehicle, yaw counter-clockwise
    assert sign * (end.yaw - start.yaw) > 0.05
    assert sign * _signed_offset(route, end.x, end.y) > 0.3
    assert sign * moving_sim.lane_lateral() > 0.3
    # against the lane's own (highway-env, y-down) lateral coordinate: left is negative there
    hw_lateral = start_lane.local_coordinates(moving_sim.env.vehicle.position)[1]
    assert sign * hw_lateral < -0.3
    assert abs(moving_sim.lane_lateral() - _signed_offset(route, end.x, end.y)) < 0.05


def _pursuit(frame, route: np.ndarray, config: SimConfig, speed: float = 9.0) -> tuple[float, float, float]:
    """Pure pursuit on the route, written against the ROS frame only (the test's own driver)."""
    p = np.array([frame.x, frame.y])
    i = int(np.argmin(np.linalg.norm(route - p, axis=1)))
    d = route[min(i + 7, len(route) - 1)] - p
    alpha = math.atan2(d[1], d[0]) - frame.yaw  # + = target on the left
    curvature = 2.0 * math.sin(alpha) / max(float(np.linalg.norm(d)), 1e-3)
    beta = math.asin(max(-0.99, min(0.99, 2.5 * curvature)))  # highway-env bicycle: yaw rate = v sin(beta) / 2.5
    steer = -math.atan(2.0 * math.tan(beta)) / config.max_steer_rad  # CARLA: left is negative
    error = speed - frame.speed
    return min(1.0, max(0.0, 0.5 * error)), max(-1.0, min(1.0, steer)), min(1.0, max(0.0, -0.5 * error))


def test_pure_pursuit_on_the_route_laps_without_invasions() -> None:
    config = SimConfig(other_vehicles=0)
    sim = RacetrackSim(config)
    frame = sim.reset(LEFT_LANE_SEED)
    route = sim.route()
    frames = []
    for _ in range(1200):
        frame = sim.step(*_pursuit(frame, route, config))
        frames.append(frame)
        if len(frames) > 100 and np.linalg.norm(route[-1] - [frame.x, frame.y]) < 2.0:
            break
    assert np.linalg.norm(route[-1] - [frame.x, frame.y]) < 2.0  # the lap was completed
    assert not any(f.lane_invasion or f.offroad or f.collision for f in frames)
    assert {f.lane for f in frames} == {0}
    assert max(abs(sim.lane_lateral()), abs(_signed_offset(route, frame.x, frame.y))) < 0.5


def test_throttle_accelerates_brake_stops_without_reversing(sim: RacetrackSim) -> None:
    sim.reset(2)
    speeds = [f.speed for f in _drive(sim, [(1.0, 0.0, 0.0)] * 20)]
    assert all(b > a for a, b in zip(speeds, speeds[1:]))
    coast = [f.speed for f in _drive(sim, [(0.0, 0.0, 0.0)] * 5)]
    assert speeds[-1] > coast[-1] > speeds[-1] - 0.5  # coasting loses a little speed
    brake = [f.speed for f in _drive(sim, [(0.0, 0.0, 1.0)] * 20)]
    assert brake[0] < coast[-1] and brake[-1] == 0.0 and min(brake) >= 0.0


# --- events -----------------------------------------------------------------------------------
def _run_until(sim: RacetrackSim, control, predicate, limit: int = 200):
    events = []
    for _ in range(limit):
        frame = sim.step(*control)
        events.append(frame)
        if predicate(frame):
            break
    return events


def test_changing_lane_is_broken_leaving_the_road_is_solid(moving_sim: RacetrackSim) -> None:
    assert moving_sim.reset(LEFT_LANE_SEED).lane == 0
    frames = _drive(moving_sim, [(0.3, 0.0, 0.0)] * 3)
    assert not any(f.lane_invasion for f in frames) and not any(f.offroad for f in frames)
    frames = _run_until(moving_sim, (0.3, 0.35, 0.0), lambda f: f.offroad)
    crossed = [(f.lane_invasion, f.lane, f.offroad) for f in frames if f.lane_invasion]
    assert crossed == [([LANE_MARKING_BROKEN], 1, False), ([LANE_MARKING_SOLID], 2, True)]
    # back onto the road crosses the edge again
    frames = _run_until(moving_sim, (0.3, -0.6, 0.0), lambda f: not f.offroad)
    assert frames[-1].lane_invasion == [LANE_MARKING_SOLID] and frames[-1].lane == 1


def test_leaving_the_road_to_the_left_is_solid_and_offroad(moving_sim: RacetrackSim) -> None:
    moving_sim.reset(LEFT_LANE_SEED)
    frames = _run_until(moving_sim, (0.3, -0.35, 0.0), lambda f: bool(f.lane_invasion))
    assert frames[-1].lane_invasion == [LANE_MARKING_SOLID]
    assert frames[-1].offroad and frames[-1].lane == -1


def test_rear_end_crash_is_one_collision_event_with_the_other_actor() -> None:
    sim = RacetrackSim(SimConfig(initial_speed=8.0, other_vehicles=1))
    sim.reset(RIGHT_LANE_SEED)
    ego, other = sim.env.road.vehicles[0], sim.env.road.vehicles[1]
    # park the other car 15 m ahead in the ego's lane, crawling
    lane = sim.env.road.network.get_lane(ego.lane_index)
    s = lane.local_coordinates(ego.position)[0]
    other.position = lane.position(s + 15.0, 0.0)
    other.heading, other.speed, other.target_speed = lane.heading_at(s + 15.0), 1.0, 1.0
    other.on_state_update()
    other.target_lane_index = other.lane_index
    frames = _run_until(sim, (1.0, 0.0, 0.0), lambda f: f.collision, limit=100)
    hit = frames[-1]
    assert hit.collision and hit.other_actor_id == OTHER_ACTOR_ID_BASE
    assert hit.normal_impulse[0] < 0  # the other car is slower: impulse against our motion (east)
    later = _drive(sim, [(1.0, 0.0, 0.0)] * 5)
    assert sum(f.collision for f in later) <= 1  # no event per tick while in contact


def test_sanitize_control() -> None:
    last = (0.2, 0.1, 0.0)
    assert sanitize_control(0.5, -0.5, 0.0, last) == ((0.5, -0.5, 0.0), "ok")
    assert sanitize_control(2.0, -3.0, -1.0, last) == ((1.0, -1.0, 0.0), "clamped")
    assert sanitize_control(float("nan"), 0.0, 0.0, last) == (last, "rejected")
    assert sanitize_control(0.0, float("inf"), 0.0, last) == (last, "rejected")


# --- the node in the lockstep runtime ------------------------------------------------------------
class _Driver:
    """Answers every camera image with a constant control; may request one reset."""

    def __init__(self, ctx, controls: int, reset_after: int | None = None, control=None) -> None:
        self.ctx, self.topics = ctx, Topics()
        self.pub = ctx.create_publisher(T.CONTROL, self.topics.control)
        self.reset_pub = ctx.create_publisher(T.HEADER, self.topics.reset_request)
        ctx.create_subscription(T.IMAGE, self.topics.camera, self.on_image)
        self.images, self.controls, self.reset_after = 0, controls, reset_after
        self.control = control or {"throttle": 0.5, "steer": 0.0, "brake": 0.0}

    def on_image(self, msg) -> None:
        self.images += 1
        if self.images == self.reset_after:
            self.reset_pub.publish(self.ctx.new(T.HEADER, frame_id="collision"))
        if self.images <= self.controls:
            self.pub.publish(self.ctx.new(T.CONTROL, **self.control))


def _stamp_ns(t) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def _run_graph(controls: int, reset_after: int | None = None, control=None, config: SimConfig | None = None):
    runtime = LocalRuntime({"simulator": {"seed": 40}})
    node = SimulatorNode(runtime.context("simulator"), config or SimConfig(other_vehicles=2))
    driver = _Driver(runtime.context("driver"), controls, reset_after, control)
    log: list[tuple[str, str, object]] = []
    runtime.add_tap(lambda topic, type_name, msg, t: log.append((topic, type_name, msg)))
    node.start()
    runtime.spin()
    return runtime, node, driver, log


def _ticks(log) -> list[list[tuple[str, str, object]]]:
    """Split the published messages into ticks at each /clock."""
    ticks: list = []
    for entry in log:
        if entry[0] == "/clock":
            ticks.append([])
        if ticks and entry[0] != Topics().control:
            ticks[-1].append(entry)
    return ticks


def test_node_ticks_once_per_control_with_bridge_topics_and_equal_stamps() -> None:
    runtime, node, driver, log = _run_graph(controls=6)
    tp = Topics()
    assert node.ticks == 7 and driver.images == 7 and node.controls_received == 6
    assert node.episodes == 1 and node.resets_by_reason == {}
    types = runtime.topic_types()
    expected = {
        tp.clock: T.CLOCK, tp.carla_status: T.CARLA_STATUS, tp.route: T.PATH, tp.episode_start: T.HEADER,
        tp.odometry: T.ODOMETRY, tp.speedometer: T.FLOAT32, tp.vehicle_status: T.VEHICLE_STATUS,
        tp.collision: T.COLLISION, tp.lane_invasion: T.LANE_INVASION, tp.camera: T.IMAGE,
        tp.control: T.CONTROL, tp.reset_request: T.HEADER,
    }
    assert {k: types[k] for k in expected} == expected
    ticks = _ticks(log)
    assert len(ticks) == 7
    clocks = []
    for k, tick in enumerate(ticks):
        topics = [topic for topic, _, _ in tick]
        # clock first; the camera (a sensor) before the odometry (a pseudo-sensor), as the bridge sends them
        assert topics[0] == tp.clock and topics.index(tp.camera) < topics.index(tp.odometry)
        for required in (tp.carla_status, tp.odometry, tp.speedometer, tp.vehicle_status):
            assert topics.count(required) == 1
        assert (tp.route in topics) == (tp.episode_start in topics) == (k == 0)
        clock = _stamp_ns(tick[0][2].clock)
        clocks.append(clock)
        for topic, _, msg in tick:
            if hasattr(msg, "header"):
                assert _stamp_ns(msg.header.stamp) == clock, topic
            if topic == tp.carla_status:
                assert msg.frame == k + 1 and msg.synchronous_mode and msg.fixed_delta_seconds == pytest.approx(0.05)
            if topic == tp.camera:
                assert (msg.encoding, msg.width, msg.height, msg.step) == ("bgra8", 160, 120, 640)
                assert msg.header.frame_id == "ego_vehicle/rgb_front" and msg.data.size == 160 * 120 * 4
            if topic == tp.odometry:
                assert (msg.header.frame_id, msg.child_frame_id) == ("map", "ego_vehicle")
            if topic == tp.route:
                assert msg.header.frame_id == "map" and len(msg.poses) > 100
                assert all(_stamp_ns(p.header.stamp) == clock and p.header.frame_id == "map" for p in msg.poses)
            if topic == tp.episode_start:
                assert msg.frame_id == "0"
            if topic == tp.vehicle_status and k > 0:
                assert (msg.control.throttle, msg.control.steer) == (0.5, 0.0)
    assert np.all(np.diff(clocks) == 50_000_000)  # exactly dt per tick
    assert runtime.time_s == pytest.approx(clocks[-1] / 1e9)
    speeds = [msg.data for topic, _, msg in log if topic == tp.speedometer]
    assert speeds[-1] > speeds[0]


def test_reset_request_starts_a_new_episode_on_the_next_tick() -> None:
    runtime, node, driver, log = _run_graph(controls=6, reset_after=3)
    tp = Topics()
    assert node.ticks == 7 and node.episodes == 2 and node.resets_by_reason == {"collision": 1}
    ticks = _ticks(log)
    starts = [(k, msg) for k, tick in enumerate(ticks) for topic, _, msg in tick if topic == tp.episode_start]
    assert [(k, m.frame_id) for k, m in starts] == [(0, "0"), (3, "1")]
    assert _stamp_ns(starts[1][1].stamp) == _stamp_ns(ticks[3][0][2].clock)
    routes = [msg for topic, _, msg in log if topic == tp.route]
    assert len(routes) == 2
    first, second = ([(p.pose.position.x, p.pose.position.y) for p in r.poses] for r in routes)
    assert first != second  # seed 40 -> 41: another start
    assert node.last_frame.seed == 41 and node.last_frame.frame == 3
    clocks = [_stamp_ns(t[0][2].clock) for t in ticks]
    assert np.all(np.diff(clocks) == 50_000_000)  # sim time never jumps back across episodes


def test_invalid_controls_are_clamped_or_rejected_before_the_env() -> None:
    _, node, _, log = _run_graph(controls=3, control={"throttle": 7.0, "steer": float("nan"), "brake": 0.0})
    assert node.controls_rejected == 3 and node.controls_clamped == 0
    status = [msg for topic, _, msg in log if topic == Topics().vehicle_status]
    assert all(math.isfinite(m.control.steer) and 0.0 <= m.control.throttle <= 1.0 for m in status)
    _, node, _, log = _run_graph(controls=3, control={"throttle": 7.0, "steer": -4.0, "brake": 0.0})
    assert node.controls_clamped == 3
    status = [msg for topic, _, msg in log if topic == Topics().vehicle_status]
    assert (status[-1].control.throttle, status[-1].control.steer) == (1.0, -1.0)
    assert math.isfinite(node.last_frame.x) and node.last_frame.speed > 0.0


def test_collision_and_lane_invasion_are_published_only_when_they_happen() -> None:
    config = SimConfig(other_vehicles=0, initial_speed=8.0)
    control = {"throttle": 0.3, "steer": 0.4, "brake": 0.0}
    runtime, node, _, log = _run_graph(controls=60, control=control, config=config)
    tp = Topics()
    invasions = [msg for topic, _, msg in log if topic == tp.lane_invasion]
    assert 1 <= len(invasions) == node.lane_invasions < node.ticks
    assert all(m.crossed_lane_markings.dtype == np.int32 and m.crossed_lane_markings.size >= 1 for m in invasions)
    assert invasions[-1].crossed_lane_markings.tolist() == [LANE_MARKING_SOLID]
    assert not any(topic == tp.collision for topic, _, _ in log) and node.collisions == 0
