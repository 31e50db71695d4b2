"""Hazards: seeded cars in the ego's lane that only the camera shows, and the drivers that face them."""
from __future__ import annotations

import math

import numpy as np
import pytest

from td3_drive.app import evaluation
from td3_drive.app.protocol import Protocol
from td3_drive.driving.classical import ClassicalConfig, PurePursuitPID, idm_acceleration
from td3_drive.driving.control import action_to_control_fields
from td3_drive.driving.metrics import EpisodeMetricsRecorder, summarize_by
from td3_drive.driving.observation import FrameAblation, VehiclePose, kinematic_state
from td3_drive.sim.hazards import KINDS, NONE, HazardPlan, HazardScript, hazard_kind, parse_kinds, plan_hazard
from td3_drive.sim.racetrack import LEAD_LATERAL_M, RacetrackSim, SimConfig

# the embedded simulator's car, as config/embedded.yaml gives it to the classical controller
EMBEDDED_CAR = dict(target_speed=8.33, wheelbase=5.0, rear_axle_offset=2.5, max_steer_deg=28.65)


def _sim(kind: str, **overrides) -> RacetrackSim:
    config = dict(random_start=True, hazard_share=1.0, hazards=kind, route_length_m=200.0, other_vehicles=2)
    return RacetrackSim(SimConfig(**{**config, **overrides}))


def _pose(frame) -> VehiclePose:
    return VehiclePose(frame.x, frame.y, frame.yaw, frame.speed)


def test_hazard_share_holds_over_any_run_of_consecutive_seeds_and_kinds_take_turns():
    for first in (0, 1_000_001, 7_000):  # an evaluation protocol, a training run's seeds
        kinds = [hazard_kind(first + k, 0.5, KINDS) for k in range(20)]
        hazards = [k for k in kinds if k != NONE]
        assert 9 <= len(hazards) <= 11, kinds
        assert set(hazards) == set(KINDS), kinds
    assert all(hazard_kind(s, 0.0, KINDS) == NONE for s in range(100))
    assert all(hazard_kind(s, 1.0, KINDS) != NONE for s in range(100))
    assert plan_hazard(12, 1.0, KINDS) == plan_hazard(12, 1.0, KINDS), "a seed always gives the same hazard"
    assert plan_hazard(12, 1.0, KINDS) != plan_hazard(13, 1.0, KINDS)
    with pytest.raises(ValueError, match="hazards must name"):
        parse_kinds("brake_hold,meteor")
    with pytest.raises(ValueError, match="hazard_share"):
        RacetrackSim(SimConfig(hazard_share=1.5))


@pytest.mark.parametrize("kind", ["brake_hold", "slow_lead"])
@pytest.mark.parametrize("seed", [3, 40])
def test_a_lead_hazard_starts_in_the_ego_lane_at_its_planned_gap(kind, seed):
    sim = _sim(kind)
    frame = sim.reset(seed)
    plan = plan_hazard(seed, 1.0, (kind,))
    assert frame.hazard == kind == plan.kind
    assert frame.lead_gap == pytest.approx(plan.start_gap_m, abs=0.5), "measured along the route, bumper to bumper"
    assert frame.lead_speed == pytest.approx(plan.speed)
    car = sim._hazard_car
    # on the ego's lane: its centre is on the route
    _, lateral = sim._path.project(car.position, 0.0, 200.0)
    assert lateral < 0.3


@pytest.mark.parametrize("seed", [3, 40])
def test_a_cut_in_starts_beside_the_ego_lane_and_moves_into_it_at_its_gap(seed):
    sim = _sim("cut_in", other_vehicles=0)
    frame = sim.reset(seed)
    plan = plan_hazard(seed, 1.0, ("cut_in",))
    assert frame.hazard == "cut_in" and math.isinf(frame.lead_gap), "the adjacent lane is not the ego's path"
    _, lateral = sim._path.project(sim._hazard_car.position, 0.0, 200.0)
    assert 4.0 < lateral < 6.0  # one 5 m lane over
    driver, route = PurePursuitPID(ClassicalConfig(**EMBEDDED_CAR)), sim.route()
    while sim._script.phase == "cruise":
        fields, _ = action_to_control_fields(driver.act(_pose(frame), route, 0.05))
        frame = sim.step(fields["throttle"], fields["steer"], fields["brake"])
        assert frame.time_s < 40.0
    gap_at_trigger = sim._hazard_s - sim._ego_s - 5.0
    assert gap_at_trigger <= plan.trigger_gap_m + 0.5
    for _ in range(60):  # 3 s to change lanes
        frame = sim.step(0.0, 0.0, 1.0)
    _, lateral = sim._path.project(sim._hazard_car.position, sim._ego_s, sim._ego_s + 80.0)
    assert lateral < LEAD_LATERAL_M and math.isfinite(frame.lead_gap), "now it is the ego's lead"


def test_brake_hold_brakes_on_its_trigger_and_holds_until_the_ego_has_waited():
    plan = HazardPlan("brake_hold", 30.0, 6.0, brake_decel=5.0, trigger_gap_m=10.0, trigger_distance_m=1e9,
                      wait_s=2.0)
    script, dt, speed = HazardScript(plan), 0.05, 6.0
    assert script.update(dt, 30.0, 8.0, speed) == (None, False) and script.phase == "cruise"
    accel, _ = script.update(dt, 9.0, 8.0, speed)  # the ego closed in
    assert script.phase == "brake" and accel == -5.0
    while script.phase == "brake":
        speed = max(speed + accel * dt, 0.0)
        accel, _ = script.update(dt, 9.0, 4.0, speed)
    assert script.phase == "hold" and speed == 0.0
    for _ in range(100):  # 5 s with the ego still rolling: no waiting counted
        assert script.update(dt, 3.0, 1.0, 0.0)[0] == 0.0
    assert script.phase == "hold"
    ticks = 0
    while script.phase == "hold":
        accel, _ = script.update(dt, 3.0, 0.0, 0.0)
        ticks += 1
    assert ticks == pytest.approx(plan.wait_s / dt, abs=1) and accel is None, "drives on (IDM) after the wait"
    # a lead that nobody waits for gives up after MAX_HOLD_S
    impatient = HazardScript(plan)
    impatient.phase = "hold"
    for _ in range(int(30.0 / dt) + 1):
        impatient.update(dt, 50.0, 8.0, 0.0)
    assert impatient.phase == "go"


def test_the_state_is_blind_to_other_vehicles_and_the_camera_is_not():
    """Same seed and controls, a hazard or none: the 53-d state is identical, the camera image is not."""
    runs = []
    for share in (1.0, 0.0):
        sim = _sim("brake_hold", hazard_share=share, other_vehicles=0)
        frame = sim.reset(5)
        route, driver = sim.route(), PurePursuitPID(ClassicalConfig(**EMBEDDED_CAR))
        states, images = [], []
        for _ in range(60):  # 3 s: the lead (>= 20 m ahead, driving away) is never reached
            fields, _ = action_to_control_fields(driver.act(_pose(frame), route, 0.05))
            frame = sim.step(fields["throttle"], fields["steer"], fields["brake"])
            states.append(kinematic_state(_pose(frame), route))
            images.append(frame.image_bgra)
        assert not frame.collision
        runs.append((frame.hazard, np.array(states), np.array(images)))
    (hazard_a, states_a, images_a), (hazard_b, states_b, images_b) = runs
    assert (hazard_a, hazard_b) == ("brake_hold", NONE)
    np.testing.assert_array_equal(states_a, states_b)
    assert np.abs(images_a.astype(int) - images_b.astype(int)).sum() > 0, "the lead car is in the picture"


def test_a_braking_car_shows_brake_lights():
    sim = _sim("brake_hold", other_vehicles=0)
    sim.reset(3)
    car = sim._hazard_car

    def red_pixels() -> int:
        image = sim.render()
        b, g, r = (image[..., i].astype(int) for i in range(3))
        return int(((r > 200) & (g < 80) & (b < 80)).sum())

    car.forced_acceleration = None
    sim.step(0.0, 0.0, 1.0)
    assert red_pixels() == 0
    car.forced_acceleration = -5.0
    sim._script.phase = "brake"  # the script would now keep braking
    sim.env.road.act()  # the car's action this tick: braking
    assert red_pixels() > 0


def test_idm_gap_keeping():
    c = ClassicalConfig(**EMBEDDED_CAR)
    assert idm_acceleration(0.0, 8.0, math.inf, 0.0, c) == pytest.approx(c.max_accel)  # free road, standing
    assert idm_acceleration(8.0, 8.0, math.inf, 0.0, c) == pytest.approx(0.0)  # at the desired speed
    assert idm_acceleration(8.0, 8.0, 5.0, 0.0, c) < -c.max_decel  # a stopped car 5 m ahead: brake hard
    assert idm_acceleration(5.0, 8.0, 0.0, 0.0, c) == -math.inf
    following = idm_acceleration(5.0, 8.0, 100.0, 5.0, c)
    closing = idm_acceleration(5.0, 8.0, 20.0, 0.0, c)
    assert closing < following
    pose, route = VehiclePose(0.0, 0.0, 0.0, 8.0), np.array([[0.0, 0.0], [100.0, 0.0]])
    driver = PurePursuitPID(c)
    assert driver.act(pose, route, 0.05, lead=(4.0, 0.0))[1] == -1.0, "full brake"
    assert driver.act(pose, route, 0.05, lead=(math.inf, 0.0))[1] == pytest.approx(driver.act(pose, route, 0.05)[1],
                                                                                  abs=0.05)


def test_headway_and_time_to_collision_come_from_the_ground_truth_lead():
    recorder = EpisodeMetricsRecorder()
    recorder.reset(np.array([[0.0, 0.0], [100.0, 0.0]]))
    recorder.record(0.0, VehiclePose(0.0, 0.0, 0.0, 8.0), False, 0, lead=(20.0, 4.0))  # headway 2.5 s, ttc 5 s
    recorder.record(0.05, VehiclePose(0.4, 0.0, 0.0, 8.0), False, 0, lead=(16.0, 6.0))  # 2 s, 8 s
    recorder.record(0.10, VehiclePose(0.8, 0.0, 0.0, 8.0), False, 0, lead=(math.inf, 0.0))
    m = recorder.finish("timeout")
    assert m.min_time_headway_s == pytest.approx(2.0) and m.min_ttc_s == pytest.approx(5.0)
    recorder.reset(np.array([[0.0, 0.0], [100.0, 0.0]]))
    recorder.record(0.0, VehiclePose(0.0, 0.0, 0.0, 8.0), False, 0)
    clean = recorder.finish("timeout")
    assert math.isnan(clean.min_time_headway_s) and math.isnan(clean.min_ttc_s)
    by = summarize_by([m, clean, m], ["brake_hold", "none", "cut_in"])
    assert {k: v["n"] for k, v in by.items()} == {"brake_hold": 1, "none": 1, "cut_in": 1, "hazard": 2}


def test_frame_ablation_modes():
    frames = [np.full((84, 84), i, np.uint8) for i in range(1, 8)]
    blank = FrameAblation("blank")
    assert not blank(frames[0], True).any()
    shuffled = FrameAblation("shuffled")
    first = [shuffled(f, new_episode=(i == 0)) for i, f in enumerate(frames[:3])]
    assert all(not f.any() for f in first), "nothing to borrow in the first episode"
    second = [shuffled(f, new_episode=(i == 0)) for i, f in enumerate(frames[3:])]
    # the previous episode's frames at the same tick, its last one after it ran out
    assert [int(f[0, 0]) for f in second] == [1, 2, 3, 3]
    assert FrameAblation()(frames[0], True) is frames[0]
    with pytest.raises(ValueError, match="image_ablation"):
        FrameAblation("noise")


def test_the_blind_pid_fails_hazards_and_the_privileged_driver_passes_them():
    """10 hazard episodes: the reference with the true lead distance completes them, the blind PID does not."""
    protocol = Protocol(route_length_m=120.0, episodes=10, hazard_share=1.0)
    privileged = evaluation.evaluate("privileged", "privileged", protocol=protocol, progress=False)
    blind = evaluation.evaluate("pid", "pid", protocol=protocol, progress=False)
    kinds = [row["hazard"] for row in privileged.episodes]
    assert set(kinds) == set(KINDS) and kinds == [row["hazard"] for row in blind.episodes]
    assert privileged.summary["success_rate"] >= 0.95, [(r["hazard"], r["end_reason"]) for r in privileged.episodes]
    assert blind.summary["success_rate"] <= 0.2, [(r["hazard"], r["end_reason"]) for r in blind.episodes]
    assert blind.meta["by_hazard"]["hazard"]["collisions_per_km_pooled"] > 0
    stopped = [r for r in privileged.episodes if r["hazard"] == "brake_hold"]
    assert stopped and all(r["min_ttc_s"] > 1.0 for r in stopped), "gap keeping never comes close to contact"


def test_ground_truth_lead_by_stamp_and_a_malformed_one_counted():
    from td3_drive import topics as T
    from td3_drive.nodes.bridge import GroundTruthLead
    from td3_drive.runtime.diagnostics import DropCounter
    from td3_drive.runtime.interface import RELIABLE_QOS
    from td3_drive.runtime.local import LocalRuntime

    runtime = LocalRuntime({})
    ctx, topics = runtime.context("listener"), T.Topics()
    drops = DropCounter(ctx)
    lead = GroundTruthLead(ctx, topics, drops)
    pub = ctx.create_publisher(T.JOINT_STATE, topics.lead_ground_truth, RELIABLE_QOS)

    def send(sec: int, values: list[float]) -> None:
        stamp = ctx.new("builtin_interfaces/msg/Time", sec=sec, nanosec=0)
        pub.publish(ctx.new(T.JOINT_STATE, header=ctx.new(T.HEADER, stamp=stamp), position=np.array(values)))
        runtime.spin()

    send(1, [12.5, 4.0])
    assert lead.at(1.0) == (12.5, 4.0) and lead.at(2.0) is None, "only the tick it was measured at"
    send(2, [1.0, 2.0, 3.0])
    assert drops.counts == {"bad_ground_truth": 1} and lead.at(1.0) == (12.5, 4.0)
