"""Bad input, never a crash: a battery of malformed messages through the real nodes.

Every case goes the way a real message goes: ``runtime.publish`` + ``spin`` on a LocalRuntime
running camera_preprocessor, trainer, evaluator and policy (and the simulator for controls),
then the same messages as an MCAP bag through ``td3-drive play``.  Each case must be counted
under its reason, no node may raise, every published control / feature / observation must be
finite, and the pipeline must produce a normal control on the next good tick.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from td3_drive import topics as T
from td3_drive.rl import weights
from td3_drive.rl.learner import LearnerConfig
from td3_drive.rl.models import ActorArchitecture, build_actor
from td3_drive.runtime.local import LocalRuntime
from td3_drive.runtime.messages import new_message, seconds, stamp

from support import Sent, header, odometry, route
from support import control as _control

TP = T.Topics()
DT = 0.05
WEIGHT_CAP = 10 * 1024 * 1024  # the actor is ~7.6 MB
ARCH = LearnerConfig().actor_architecture()


def camera(t: float, encoding: str = "bgra8", h: int = 48, w: int = 64, step: int | None = None,
           data: np.ndarray | None = None, channels: int = 4) -> Any:
    if data is None:
        data = np.random.default_rng(int(t * 1000)).integers(0, 256, h * w * channels, dtype=np.uint8)
    return new_message(T.IMAGE, header=header(t, "ego_vehicle/rgb_front"), height=h, width=w, encoding=encoding,
                       is_bigendian=0, step=w * channels if step is None else step, data=np.asarray(data, np.uint8))


#: controls fed by the battery are marked like its observations (the finiteness check skips what it fed)
control = functools.partial(_control, frame_id="injected")
STRAIGHT = [(float(x), 0.0) for x in np.arange(0.0, 400.0, 2.0)]


def observation(t: float, encoding: str = "mono8", width: int = 336, cut: int = 0, state: Any = None) -> Sent:
    pixels = np.random.default_rng(int(t * 1000)).integers(0, 256, 84 * width, dtype=np.uint8)
    image = new_message(T.IMAGE, header=header(t, "injected"), height=84, width=width, encoding=encoding,
                        is_bigendian=0, step=width, data=pixels[: pixels.size - cut].copy())
    position = np.zeros(53) if state is None else np.asarray(state, np.float64)
    joint = new_message(T.JOINT_STATE, header=header(t, "injected"), name=[f"s{i}" for i in range(len(position))],
                        position=position)
    return [(TP.observation_image, image), (TP.observation_state, joint)]


def weights_msg(blob: bytes) -> Any:
    return new_message(T.UINT8_ARRAY, data=np.frombuffer(blob, dtype=np.uint8).copy())


def _actor_blob(architecture: ActorArchitecture, metadata_format: str = weights.FORMAT, poison: bool = False) -> bytes:
    torch.manual_seed(0)
    state = {k: v.detach().float().contiguous() for k, v in build_actor(architecture).state_dict().items()}
    if poison:
        next(iter(state.values())).view(-1)[0] = float("nan")
    metadata = {"format": metadata_format, "version": "7", "architecture": architecture.to_json()}
    return save_safetensors(state, metadata=metadata)


# ------------------------------------------------------------------ the battery
@dataclass
class Case:
    name: str
    expect: dict[str, str]  # node -> reason counted
    build: Callable[[float], Sent]  # t (stamp of the last good tick) -> messages


def _cam(**kw: Any) -> Callable[[float], Sent]:
    return lambda t: [(TP.camera, camera(t + DT / 2, **kw))]


PRE, POL, TRN, EVA = "camera_preprocessor", "policy", "trainer", "evaluator"
WORLD = (PRE, TRN, EVA)  # the nodes with a BridgeWorld: all of them count bad odometry / routes


def _world(reason: str) -> dict[str, str]:
    return {n: reason for n in WORLD}


CASES = [
    # camera image -> camera_preprocessor
    Case("image_unknown_encoding", {PRE: "bad_encoding"}, _cam(encoding="yuv422")),
    Case("image_float_encoding", {PRE: "bad_encoding"}, _cam(encoding="32FC1")),
    Case("image_empty_encoding", {PRE: "bad_encoding"}, _cam(encoding="")),
    Case("image_zero_width", {PRE: "empty_image"}, _cam(w=0, step=0, data=np.zeros(0))),
    Case("image_zero_height", {PRE: "empty_image"}, _cam(h=0, data=np.zeros(0))),
    Case("image_step_too_small", {PRE: "bad_step"}, _cam(step=10)),
    Case("image_truncated", {PRE: "size_mismatch"}, _cam(data=np.zeros(48 * 64 * 4 // 2))),
    Case("image_empty_data", {PRE: "size_mismatch"}, _cam(data=np.zeros(0))),
    Case("image_huge_dimensions", {PRE: "size_mismatch"}, _cam(h=1 << 20, w=1 << 20, data=np.zeros(64))),
    Case("image_step_overflows_data", {PRE: "size_mismatch"}, _cam(step=64 * 4 * 3)),
    Case("image_duplicate_stamp", {PRE: "stale_stamp", EVA: "stale_stamp"}, lambda t: [(TP.camera, camera(t))]),
    Case("image_out_of_order", {PRE: "stale_stamp", EVA: "stale_stamp"}, lambda t: [(TP.camera, camera(t - 1.0))]),
    # the image waits for the odometry of its own tick; the next tick's odometry shows it never came
    Case("image_without_its_odometry", {PRE: "no_pose_for_image", EVA: "no_pose_for_image"},
         lambda t: [(TP.camera, camera(t + DT / 2)), (TP.odometry, odometry(t + DT, 10.0))]),
    # odometry -> every BridgeWorld
    Case("odometry_nan_position", _world("non_finite"), lambda t: [(TP.odometry, odometry(t + DT / 2, float("nan")))]),
    Case("odometry_inf_speed", _world("non_finite"), lambda t: [(TP.odometry, odometry(t + DT / 2, 10.0, speed=math.inf))]),
    Case("odometry_nan_orientation", _world("non_finite"),
         lambda t: [(TP.odometry, odometry(t + DT / 2, 10.0, quaternion=(0.0, 0.0, float("nan"), 1.0)))]),
    Case("odometry_zero_quaternion", _world("bad_quaternion"),
         lambda t: [(TP.odometry, odometry(t + DT / 2, 10.0, quaternion=(0.0, 0.0, 0.0, 0.0)))]),
    Case("odometry_out_of_order", _world("stale_odometry_stamp"), lambda t: [(TP.odometry, odometry(t - 1.0, 10.0))]),
    # route -> every BridgeWorld (the previous route stays)
    Case("route_empty", _world("empty_route"), lambda t: [(TP.route, route([]))]),
    Case("route_single_point", _world("degenerate_route"), lambda t: [(TP.route, route([(1.0, 2.0)]))]),
    Case("route_coincident_points", _world("degenerate_route"), lambda t: [(TP.route, route([(3.0, 3.0)] * 5))]),
    Case("route_nan_point", _world("non_finite"), lambda t: [(TP.route, route([(0.0, 0.0), (float("nan"), 1.0)]))]),
    Case("route_inf_point", _world("non_finite"), lambda t: [(TP.route, route([(0.0, 0.0), (math.inf, 0.0)]))]),
    # observation topics -> policy and trainer
    Case("observation_wrong_encoding", {POL: "bad_observation", TRN: "bad_observation"},
         lambda t: observation(t + DT / 2, encoding="rgb8")),
    Case("observation_wrong_width", {POL: "bad_observation", TRN: "bad_observation"},
         lambda t: observation(t + DT / 2, width=300)),
    Case("observation_truncated", {POL: "bad_observation", TRN: "bad_observation"},
         lambda t: observation(t + DT / 2, cut=1000)),
    Case("observation_state_nan", {POL: "bad_observation", TRN: "bad_observation"},
         lambda t: observation(t + DT / 2, state=[float("nan")] * 53)),
    Case("observation_state_overflows_float32", {POL: "bad_observation", TRN: "bad_observation"},
         lambda t: observation(t + DT / 2, state=[1e300] * 53)),
    Case("observation_state_wrong_length", {POL: "bad_observation", TRN: "bad_observation"},
         lambda t: observation(t + DT / 2, state=[0.0] * 7)),
    Case("observation_duplicate_stamp", {POL: "stale_observation", TRN: "stale_observation"},
         lambda t: observation(t)),
    Case("observation_out_of_order", {POL: "stale_observation", TRN: "stale_observation"},
         lambda t: observation(t - 1.0)),
    # controls -> trainer (for the observation it keeps: stamp t)
    Case("control_steer_out_of_range", {TRN: "control_out_of_range"}, lambda t: [(TP.control, control(t, steer=2.0))]),
    Case("control_negative_throttle", {TRN: "control_out_of_range"},
         lambda t: [(TP.control, control(t, throttle=-0.5))]),
    Case("control_nan", {TRN: "non_finite"}, lambda t: [(TP.control, control(t, steer=float("nan")))]),
    Case("control_duplicate", {TRN: "duplicate_control"}, lambda t: [(TP.control, control(t))]),
    # actor weights -> policy (the old weights stay)
    Case("weights_oversized", {POL: "weights_oversized"}, lambda t: [(TP.actor_weights, weights_msg(bytes(WEIGHT_CAP + 1)))]),
    Case("weights_empty", {POL: "weights_truncated"}, lambda t: [(TP.actor_weights, weights_msg(b""))]),
    Case("weights_garbage", {POL: "weights_bad_header"},
         lambda t: [(TP.actor_weights, weights_msg(np.random.default_rng(1).bytes(4096)))]),
    Case("weights_header_not_json", {POL: "weights_bad_header"},
         lambda t: [(TP.actor_weights, weights_msg((16).to_bytes(8, "little") + b"{not json at all" + b"x" * 32))]),
    Case("weights_wrong_format", {POL: "weights_wrong_format"},
         lambda t: [(TP.actor_weights, weights_msg(_actor_blob(ARCH, metadata_format="someone.else")))]),
    Case("weights_wrong_architecture", {POL: "weights_wrong_architecture"},
         lambda t: [(TP.actor_weights, weights_msg(_actor_blob(dataclasses.replace(ARCH, frame_stack=3))))]),
    Case("weights_non_finite", {POL: "weights_non_finite"},
         lambda t: [(TP.actor_weights, weights_msg(_actor_blob(ARCH, poison=True)))]),
]
PLAYED_NODES = (PRE, POL)  # what `td3-drive play` runs
SIM_CASES = [  # controls -> simulator: clamped or ignored, never applied as NaN
    ("sim_control_nan_throttle", "control_non_finite", dict(throttle=float("nan"))),
    ("sim_control_inf_steer", "control_non_finite", dict(steer=math.inf)),
    ("sim_control_throttle_above_1", "control_clamped", dict(throttle=5.0)),
    ("sim_control_negative_brake", "control_clamped", dict(brake=-1.0)),
]


def test_battery_size() -> None:
    names = [c.name for c in CASES] + [c[0] for c in SIM_CASES]
    assert len(set(names)) == len(names) >= 30


# ------------------------------------------------------------------ output checks
class OutputCheck:
    """A tap: every control, feature, observation state and reward published must be finite (and in range)."""

    def __init__(self) -> None:
        self.checked = 0
        self.bad: list[str] = []
        self.controls: list[Any] = []

    def __call__(self, topic: str, type_name: str, msg: Any, time_s: float) -> None:
        values: list[float] = []
        if getattr(getattr(msg, "header", None), "frame_id", "") == "injected":
            return  # the test's own bad input, not a node's output
        if type_name == T.CONTROL:
            values = [msg.steer, msg.throttle, msg.brake]
            if not (-1 <= msg.steer <= 1 and 0 <= msg.throttle <= 1 and 0 <= msg.brake <= 1):
                self.bad.append(f"{topic}: control out of range {values}")
            self.controls.append(msg)
        elif type_name == T.FLOAT32 or (type_name == T.FLOAT32_ARRAY and topic.startswith("/td3/")):
            values = np.asarray(msg.data, dtype=np.float64).reshape(-1).tolist()
        elif type_name == T.JOINT_STATE and topic == TP.observation_state:
            values = list(msg.position)
        else:
            return
        self.checked += 1
        if not np.isfinite(np.asarray(values, dtype=np.float64)).all():
            self.bad.append(f"{topic}: non-finite {values[:4]}")


def _counts(nodes: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {name: dict(node.drops.counts) for name, node in nodes.items()}


def _delta(before: dict, after: dict) -> dict[str, dict[str, int]]:
    out = {}
    for name, counts in after.items():
        d = {k: v - before[name].get(k, 0) for k, v in counts.items() if v != before[name].get(k, 0)}
        if d:
            out[name] = d
    return out


# ------------------------------------------------------------------ the runtime path
def _graph(tmp_path: Path) -> tuple[LocalRuntime, dict[str, Any], OutputCheck]:
    from td3_drive.nodes.evaluator import EvaluatorNode
    from td3_drive.nodes.policy import PolicyNode
    from td3_drive.nodes.preprocessor import CameraPreprocessorNode
    from td3_drive.nodes.trainer import TrainerNode

    long_episode = {"reward.max_episode_steps": 100_000}
    rt = LocalRuntime({
        "trainer": {"run_dir": str(tmp_path / "run"), "device": "cpu", "learning_starts": 10**9, "batch_size": 8,
                    "checkpoint_every": 0, "replay_capacity": 1000, **long_episode},
        "evaluator": long_episode,
        "policy": {"device": "cpu", "backend": "torch", "max_weight_bytes": WEIGHT_CAP, "explore": False},
    })
    check = OutputCheck()
    rt.add_tap(check)
    nodes = {PRE: CameraPreprocessorNode(rt.context(PRE)), TRN: TrainerNode(rt.context(TRN)),
             EVA: EvaluatorNode(rt.context(EVA)), POL: PolicyNode(rt.context(POL))}
    rt.spin()
    return rt, nodes, check


def _good_tick(t: float, x: float) -> Sent:
    return [(TP.odometry, odometry(t, x)), (TP.camera, camera(t))]


def _run_battery(tmp_path: Path) -> tuple[Sent, dict[str, dict[str, int]], OutputCheck, dict, LocalRuntime]:
    rt, nodes, check = _graph(tmp_path)
    sent: Sent = []

    def send(messages: Sent) -> None:
        for topic, msg in messages:
            sent.append((topic, msg))
            rt.publish(topic, msg)
        rt.spin()

    t, x = 1.0, 10.0
    send([(TP.route, route(STRAIGHT, t)), (TP.episode_start, header(t, "0"))] + _good_tick(t, x))
    per_case: dict[str, dict[str, dict[str, int]]] = {}
    for case in CASES:
        t, x = t + DT, x + DT * 5.0
        send(_good_tick(t, x))
        before = _counts(nodes)
        send(case.build(t))
        per_case[case.name] = _delta(before, _counts(nodes))
        # the next good tick is processed normally: one fresh control for it (after every stamp a
        # case used: a future-stamped image that one node accepted must not make good ticks stale)
        t, x = t + 1.0 + DT, x + DT * 5.0
        controls = len(check.controls)
        send(_good_tick(t, x))
        fresh = [c for c in check.controls[controls:] if seconds(c.header.stamp) == pytest.approx(t)]
        assert len(fresh) == 1, f"{case.name}: no normal control after it"
    return sent, per_case, check, _counts(nodes), rt


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    return _run_battery(tmp_path_factory.mktemp("battery"))


def test_every_case_counted_under_its_reason(battery) -> None:
    _, per_case, check, totals, _ = battery
    wrong = {}
    for case in CASES:
        got = per_case[case.name]
        for node, reason in case.expect.items():
            if got.get(node, {}).get(reason, 0) < 1:
                wrong[case.name] = (case.expect, got)
    assert not wrong, wrong
    assert check.bad == [] and check.checked > 100
    # a node that drops nothing in a case must not count anything else either
    unexpected = {c.name: per_case[c.name] for c in CASES if set(per_case[c.name]) - set(c.expect)
                  and c.name != "image_without_fresh_odometry"}  # the evaluator steps on that tick, legitimately
    assert not unexpected, unexpected


def test_drop_counters_on_diagnostics(battery) -> None:
    _, _, check, totals, rt = battery
    arrays: list[Any] = []
    rt.add_tap(lambda topic, type_name, msg, t: arrays.append(msg) if topic == TP.diagnostics else None)
    rt.publish(TP.clock, new_message(T.CLOCK, clock=stamp(rt.time_s + 1.0)))  # timers run on /clock
    rt.spin()
    by_node = {s.name.split("/")[-1]: {kv.key: kv.value for kv in s.values} for a in arrays for s in a.status}
    for node in (PRE, POL, TRN):
        for reason, count in totals[node].items():
            assert by_node[node][f"dropped/{reason}"] == str(count), (node, reason)
    assert check.bad == []


def test_simulator_bad_controls(tmp_path: Path) -> None:
    from td3_drive.app.config import load_parameters
    from td3_drive.sim.node import SimulatorNode

    rt = LocalRuntime(load_parameters("embedded"))
    sim = SimulatorNode(rt.context("simulator"))
    sim.start()
    rt.spin()
    for name, reason, fields in SIM_CASES:
        before = dict(sim.drops.counts)
        rt.publish(TP.control, control(rt.time_s, **{"steer": 0.0, "throttle": 0.3, "brake": 0.0, **fields}))
        rt.spin()
        assert sim.drops.counts.get(reason, 0) == before.get(reason, 0) + 1, name
        frame = sim.last_frame
        assert np.isfinite([frame.x, frame.y, frame.yaw, frame.speed, *frame.control]).all(), name
        assert np.isfinite(frame.image_bgra).all()


# ------------------------------------------------------------------ the bag path
def test_same_battery_as_a_bag_through_play(battery, tmp_path: Path, capsys, monkeypatch) -> None:
    from td3_drive.app import cli
    from td3_drive.runtime import local
    from td3_drive.runtime.bag import BagRecorder

    sent, _, _, totals, _ = battery
    bag = tmp_path / "bad_bag"
    with BagRecorder(bag) as recorder:
        for i, (topic, msg) in enumerate(sent):
            recorder(topic, msg.__msgtype__, msg, 1.0 + i * 1e-3)  # log time = send order
    check = OutputCheck()
    original_init = local.LocalRuntime.__init__

    def init_with_check(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.add_tap(check)

    monkeypatch.setattr(local.LocalRuntime, "__init__", init_with_check)
    assert cli.main(["play", str(bag), "--set", f"policy.max_weight_bytes={WEIGHT_CAP}",
                     "--set", "policy.backend=torch", "--set", "policy.device=cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["fed"]["undecodable"] == 0
    for node in PLAYED_NODES:  # the same messages in the same order: the same counts, reason by reason
        assert result["drops"][node] == totals[node], node
    expected = {(node, case.expect[node]) for case in CASES for node in PLAYED_NODES if node in case.expect}
    assert all(result["drops"][node].get(reason, 0) >= 1 for node, reason in expected)
    assert check.bad == [] and check.checked > 50
    assert result["actions"] > 0
