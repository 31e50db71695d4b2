"""End to end on the embedded default: `td3-drive train` run directory, `play` on bags, `drive`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from td3_drive import topics as T
from td3_drive.app import cli
from td3_drive.runtime.bag import BagRecorder, read_bag
from td3_drive.runtime.local import LocalRuntime
from td3_drive.runtime.messages import new_message

TP = T.Topics()


def _run_cli(capsys, argv: list[str]) -> dict:
    capsys.readouterr()
    assert cli.main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


# ------------------------------------------------------------------ train
@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("train") / "run"
    capture = pytest.MonkeyPatch()
    import io
    import sys

    buffer = io.StringIO()
    capture.setattr(sys, "stdout", buffer)
    try:
        rc = cli.main(["train", "--steps", "100", "--run-dir", str(run), "--set", "trainer.learning_starts=50",
                       "--set", "trainer.batch_size=16", "--set", "policy.random_steps=50", "--eval-episodes", "2"])
    finally:
        capture.undo()
    assert rc == 0
    return run, json.loads(buffer.getvalue().strip().splitlines()[-1])


def test_train_summary(train_run):
    run, summary = train_run
    assert summary["command"] == "train" and summary["run_dir"] == str(run)
    assert summary["ticks"] >= 100 and summary["env_steps"] >= 90
    assert summary["updates"] > 0 and summary["skipped_updates"] == 0
    assert summary["drops"] == {}


def test_train_ends_by_evaluating_its_policy_on_the_protocol(train_run, capsys):
    run, summary = train_run
    evaluation = summary["eval"]
    assert evaluation["episodes"] == 2 and 0.0 <= evaluation["success_rate"] <= 1.0
    assert 0.0 <= evaluation["route_completion"] <= 1.0 and sum(evaluation["end_reasons"].values()) == 2
    written = json.loads((run / "eval" / "episodes.json").read_text())
    assert written["protocol"]["route_length_m"] == 200.0 and written["checkpoint"] == str(run)
    assert [row["seed"] for row in written["episodes"]] == [written["eval_seed"] + 1, written["eval_seed"] + 2]
    # the hazards protocol: its first two seeds are a clean episode and a brake_hold, reported apart
    assert written["protocol"]["name"] == "hazards"
    assert [row["hazard"] for row in written["episodes"]] == ["none", "brake_hold"]
    assert set(written["by_hazard"]) == {"none", "brake_hold", "hazard"}
    assert evaluation["success_rate_clean"] in (0.0, 1.0) and evaluation["success_rate_hazard"] in (0.0, 1.0)


def test_train_config_snapshot(train_run):
    run, _ = train_run
    config = yaml.safe_load((run / "config.yaml").read_text())
    # written as rclpy reads it: /**/ keys reach the nodes in any namespace
    trainer = config["/**/trainer"]["ros__parameters"]
    assert trainer["learning_starts"] == 50 and trainer["batch_size"] == 16 and trainer["run_dir"] == str(run)
    assert config["/**/policy"]["ros__parameters"]["random_steps"] == 50
    assert "/**/simulator" in config  # the embedded overrides are part of the snapshot


def test_train_tensorboard_scalars(train_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, summary = train_run
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/critic_loss" in tags, tags
    losses = acc.Scalars("train/critic_loss")
    assert losses and all(np.isfinite(e.value) for e in losses)
    assert all(1 <= e.step <= summary["updates"] for e in losses)
    assert "train/actor_loss" in tags  # actor metrics exist only every policy_freq updates: still logged


def test_train_checkpoint_restores_and_decodes(train_run):
    import torch

    from td3_drive.rl.checkpoint import Checkpointer
    from td3_drive.rl.learner import Learner, LearnerConfig
    from td3_drive.rl.weights import decode_actor

    run, summary = train_run
    latest = Checkpointer(run / "checkpoints").latest()
    assert latest is not None and str(latest) == summary["checkpoint"]
    params = yaml.safe_load((run / "config.yaml").read_text())["/**/trainer"]["ros__parameters"]
    config = LearnerConfig(**{k[len("learner."):]: v for k, v in params.items() if k.startswith("learner.")})
    learner = Learner(config, "cpu", seed=12345)
    fresh = {k: v.clone() for k, v in learner.actor().state_dict().items()}
    checkpoint = Checkpointer(run / "checkpoints").restore(latest, learner)
    assert checkpoint.state["state"]["env_steps"] == summary["env_steps"]
    assert learner.num_updates == summary["updates"]
    restored = learner.actor().state_dict()
    assert any(not torch.equal(fresh[k], restored[k]) for k in fresh)
    weights = decode_actor((latest / "actor.safetensors").read_bytes(), config.actor_architecture())
    assert weights.version == summary["updates"]
    assert set(weights.state_dict) == set(restored)
    for k, v in weights.state_dict.items():
        assert torch.equal(v, restored[k].cpu()), k


def test_train_bag_features_and_controls(train_run):
    run, summary = train_run
    bag = run / "bag"
    l2 = [msg.data for _, _, msg, _ in read_bag(bag, [TP.features("actor", "l2_norm")])]
    assert len(l2) >= 90
    assert all(0 < v < 100 for v in l2)
    controls = [msg for _, _, msg, _ in read_bag(bag, [TP.control])]
    assert len(controls) == len(l2)
    assert all(-1 <= c.steer <= 1 and 0 <= c.throttle <= 1 and 0 <= c.brake <= 1 for c in controls)
    topics = {topic for topic, _, _, _ in read_bag(bag)}
    assert TP.observation_state in topics and TP.features("actor", "vector") in topics
    # the bulky topics stay out by default: weights are in the checkpoints (7 MB each)
    assert TP.actor_weights not in topics and TP.observation_image not in topics
    assert all(t.startswith("/td3/") or t == TP.control for t in topics)


# ------------------------------------------------------------------ play
class _ConstantDriver:
    """Answers every camera image with the same control: the lockstep sim ticks once per answer."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.pub = ctx.create_publisher(T.CONTROL, TP.control)
        ctx.create_subscription(T.IMAGE, TP.camera, self.on_image)

    def on_image(self, msg) -> None:
        header = new_message(T.HEADER, stamp=msg.header.stamp, frame_id="test")
        self.pub.publish(new_message(T.CONTROL, header=header, throttle=0.5, steer=0.0, brake=0.0))


def _record_sim_bag(path: Path, ticks: int = 20, corrupt_camera: set[int] = frozenset()) -> int:
    """Bridge-topic bag from the embedded simulator; returns the number of camera frames recorded."""
    from td3_drive.sim.node import SimulatorNode

    rt = LocalRuntime({"simulator": {"other_vehicles": 0, "image_width": 160, "image_height": 120}})
    recorder = BagRecorder(path, topics=[TP.camera, TP.odometry, TP.route, TP.episode_start])
    cameras = [0]

    def tap(topic, type_name, msg, t):
        if topic == TP.camera:
            cameras[0] += 1
            if cameras[0] in corrupt_camera:  # same header and size fields, data cut short
                msg = new_message(T.IMAGE, header=msg.header, height=msg.height, width=msg.width,
                                  encoding=msg.encoding, is_bigendian=0, step=msg.step,
                                  data=np.asarray(msg.data)[: len(msg.data) // 2].copy())
        recorder(topic, type_name, msg, t)

    rt.add_tap(tap)
    sim = SimulatorNode(rt.context("simulator"))
    _ConstantDriver(rt.context("driver"))
    sim.start()
    rt.spin(until=lambda: sim.ticks >= ticks)
    recorder.close()
    assert recorder.counts[TP.camera] == cameras[0] == sim.ticks
    return recorder.counts[TP.camera]


def test_play_bag_from_simulator(tmp_path, capsys):
    bag = tmp_path / "drive_bag"
    frames = _record_sim_bag(bag)
    types = {topic: type_name for topic, type_name, _, _ in read_bag(bag)}
    assert types[TP.camera] == T.IMAGE and types[TP.route] == T.PATH and types[TP.episode_start] == T.HEADER
    result = _run_cli(capsys, ["play", str(bag)])
    assert result["command"] == "play"
    assert result["fed"][TP.camera] == frames and result["fed"]["undecodable"] == 0
    assert result["published"][TP.observation_image] == frames
    assert result["published"][TP.observation_state] == frames
    assert result["published"][TP.control] == frames
    assert result["actions"] == frames
    assert result["drops"] == {"camera_preprocessor": {}, "policy": {}}


def test_play_corrupted_bag_counts_drop(tmp_path, capsys):
    bag = tmp_path / "corrupt_bag"
    frames = _record_sim_bag(bag, corrupt_camera={5})
    result = _run_cli(capsys, ["play", str(bag)])
    assert result["fed"][TP.camera] == frames
    assert result["drops"]["camera_preprocessor"] == {"size_mismatch": 1}
    assert result["drops"]["policy"] == {}
    assert result["published"][TP.observation_image] == frames - 1
    assert result["published"][TP.control] == frames - 1


# ------------------------------------------------------------------ drive
def test_drive_pid_stops_at_max_ticks_without_a_summary(capsys):
    """--max-ticks ends the run before the episode ends (its complete branch: the next test)."""
    result = _run_cli(capsys, ["drive", "--controller", "pid", "--episodes", "1", "--max-ticks", "60"])
    assert result["command"] == "drive" and result["controller"] == "pid"
    assert result["episodes"] == [] and result["drops"] == {}
    assert result["summary"] is None and result["max_ticks_reached"] is True
    assert 60 <= result["ticks"] <= 80


def test_drive_pid_completes_an_episode(capsys):
    result = _run_cli(capsys, ["drive", "--controller", "pid", "--episodes", "1", "--max-ticks", "3000"])
    assert len(result["episodes"]) == 1 and result["summary"]["n"] == 1 and result["drops"] == {}
    episode = result["episodes"][0]
    assert {"success", "route_completion", "distance_m", "collisions", "return", "seed"} <= set(episode)
    assert episode["collisions"] == 0 and episode["distance_m"] > 50
    assert result["summary"]["end_reasons"]


# ------------------------------------------------------------------ publish order
def _trained_streams(tmp_path: Path, order: str) -> dict[str, list]:
    """120 ticks of the embedded training graph: what the nodes computed, per topic."""
    from td3_drive.app import config, embedded

    params = config.compose("train", 0, [], {
        "trainer": {"run_dir": str(tmp_path / order), "device": "cpu", "learning_starts": 60, "batch_size": 8,
                    "checkpoint_every": 0, "log_interval": 1000},
        "policy": {"device": "cpu", "random_steps": 60},
        "simulator": {"publish_order": order, "other_vehicles": 1},
    })
    graph = embedded.build_graph(params)
    assert graph.sim.config.publish_order == order
    streams: dict[str, list] = {TP.observation_state: [], TP.control: [], TP.reward: []}

    def tap(topic: str, type_name: str, msg, t: float) -> None:
        if topic == TP.observation_state:
            streams[topic].append((t, tuple(msg.position)))
        elif topic == TP.control:
            streams[topic].append((t, msg.header.frame_id, msg.steer, msg.throttle, msg.brake))
        elif topic == TP.reward:
            streams[topic].append((t, msg.data))

    graph.runtime.add_tap(tap)
    graph.run(120)
    streams["updates"] = [graph.nodes["trainer"].session.learner.num_updates]
    graph.close()
    return streams


def test_bridge_and_camera_last_publish_orders_train_identically(tmp_path):
    """CARLA's bridge sends each tick's camera image before its odometry; the embedded simulator
    used to send it last.  Every node pairs an image with the pose of its own tick, so the
    observations, actions and rewards are the same in both orders, bit for bit."""
    bridge, camera_last = _trained_streams(tmp_path, "bridge"), _trained_streams(tmp_path, "camera_last")
    assert len(bridge[TP.observation_state]) >= 115 and bridge["updates"][0] > 0
    assert bridge == camera_last
