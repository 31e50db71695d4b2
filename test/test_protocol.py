"""The evaluation protocol: random starts over the lap, fixed-length routes, time limit, success, video."""
from __future__ import annotations

import json

import numpy as np
import pytest

from td3_drive.app import cli, evaluation
from td3_drive.app.protocol import Protocol
from td3_drive.app.video import read_frames
from td3_drive.driving.reward import RewardConfig
from td3_drive.sim.racetrack import RacetrackSim, SimConfig


def _start(sim: RacetrackSim, seed: int) -> tuple[int, int]:
    sim.reset(seed)
    segment, _, rank, offroad = sim._track.locate(sim.env.vehicle.position)
    assert not offroad
    return segment, rank


def test_random_starts_cover_the_lap_on_both_lanes():
    sim = RacetrackSim(SimConfig(random_start=True, other_vehicles=0, route_length_m=50.0))
    starts = [_start(sim, seed) for seed in range(40)]
    segments, ranks = {s for s, _ in starts}, {r for _, r in starts}
    assert ranks == {0, 1}
    assert len(segments) >= 7, f"starts should spread over the 9 roads of the lap, got {sorted(segments)}"
    assert _start(sim, 11) == starts[11], "a seed always gives the same start"
    # every start is on its lane's centre, heading along it: the route begins under the car
    for seed in range(5):
        frame = sim.reset(seed)
        assert abs(sim.lane_lateral()) < 1e-6
        route = sim.route()
        assert np.hypot(route[0, 0] - frame.x, route[0, 1] - frame.y) < 1e-6
        heading = np.arctan2(*(route[3] - route[0])[::-1])
        assert abs(np.angle(np.exp(1j * (heading - frame.yaw)))) < 0.2
        assert abs(np.sum(np.hypot(*np.diff(route, axis=0).T)) - 50.0) < 1.0


@pytest.mark.parametrize("seed", [139, 304])
def test_a_start_within_the_join_margin_still_gets_a_full_route(seed):
    """These seeds start just past a lane's end, where locate() still names the previous road:
    the route must continue on the next one (it used to loop without ever reaching its length)."""
    sim = RacetrackSim(SimConfig(random_start=True, other_vehicles=0))
    frame = sim.reset(seed)
    route = sim.route()
    assert np.hypot(route[0, 0] - frame.x, route[0, 1] - frame.y) < 1e-6
    assert abs(np.sum(np.hypot(*np.diff(route, axis=0).T)) - sim.lap_length_m) < 2.0


def test_highway_env_start_stays_the_default_of_the_simulator():
    sim = RacetrackSim(SimConfig(other_vehicles=0))
    assert {_start(sim, seed)[0] for seed in range(10)} == {0}, "highway-env starts in the first straight"


def test_time_limit_is_met_at_half_the_target_speed():
    protocol = Protocol.named("clean", route_length_m=200.0)
    steps = protocol.time_limit_steps(target_speed=8.0, dt=0.05)
    assert steps == 1000  # 200 m at 4 m/s = 50 s = 1000 ticks of 50 ms
    assert steps * 0.05 * 0.5 * 8.0 >= 200.0
    # the hazards protocol (the default) adds 20 s to stop and wait behind a hazard
    assert Protocol(route_length_m=200.0).time_limit_steps(target_speed=8.0, dt=0.05) == 1400
    assert protocol.parameters()["simulator"]["hazard_share"] == 0.0
    assert Protocol().parameters()["simulator"]["hazard_share"] == 0.5
    params = protocol.parameters()
    assert params["simulator"]["random_start"] and params["simulator"]["route_length_m"] == 200.0
    assert params["evaluator"]["reward.max_episode_steps"] == protocol.time_limit_steps(
        RewardConfig.target_speed, RewardConfig.dt)
    assert "other_vehicles" not in params["simulator"]
    assert Protocol(traffic=False).parameters()["simulator"]["other_vehicles"] == 0


def test_pid_succeeds_on_a_short_protocol_without_traffic():
    """Proves the routes, the starts and the time limit (not a learner): PID completes >= 95 %."""
    protocol = Protocol(route_length_m=60.0, episodes=10, traffic=False)
    result = evaluation.evaluate("pid", "pid", protocol=protocol, progress=False)
    summary = result.summary
    assert summary["n"] == 10
    assert summary["success_rate"] >= 0.95, summary["end_reasons"]
    assert [row["seed"] for row in result.episodes] == [protocol.eval_seed + k for k in range(1, 11)]
    for row in result.episodes:  # success = route completed, no collision, never out of the corridor
        assert row["success"] == (row["completed"] and row["collisions"] == 0 and not row["off_route"])
        if row["completed"]:  # the route is 60 m long: completing it means driving about that far
            assert 55.0 <= row["distance_m"] <= 70.0


def test_a_car_that_never_moves_times_out_at_the_limit_and_fails():
    protocol = Protocol.named("clean", route_length_m=20.0, episodes=1, traffic=False)  # 20 m / 4 m/s = 100 ticks
    result = evaluation.evaluate("stopped", "pid", protocol=protocol, progress=False,
                                 overrides=["classical_controller.target_speed=0.0"])
    (row,) = result.episodes
    assert row["end_reason"] == "timeout" and not row["success"]
    # ticks recorded = the episode's first tick + one per step
    assert row["steps"] - 1 == protocol.time_limit_steps(RewardConfig.target_speed, RewardConfig.dt) == 100


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_drive_video_has_one_overlaid_non_blank_frame_per_tick(tmp_path, capsys, suffix):
    video = tmp_path / f"drive{suffix}"
    assert cli.main(["drive", "--controller", "pid", "--episodes", "1", "--route-length", "15",
                     "--no-traffic", "--video", str(video)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    frames = read_frames(video)
    every = 2 if suffix == ".gif" else 1  # GIFs keep every second tick
    assert summary["video_frames"] == len(frames) == -(-summary["ticks"] // every) > 10
    first, last = frames[0].astype(float), frames[-1].astype(float)
    assert first.shape[0] == 360 and first.std() > 10 and last.std() > 10, "frames are not blank"
    assert np.abs(first - last).mean() > 1.0, "the view moves with the car"
    # the overlay: white text pixels in the top-left corner, which the top-down camera never draws
    assert (frames[len(frames) // 2][5:90, 5:200] > 240).all(axis=-1).mean() > 0.01


def test_drive_refuses_an_unknown_video_format_before_driving(tmp_path):
    with pytest.raises(SystemExit, match="--video must end in .mp4 or .gif"):
        cli.main(["drive", "--controller", "pid", "--video", str(tmp_path / "drive.avi")])
    assert not (tmp_path / "drive.avi").exists()
