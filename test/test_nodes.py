"""The nodes on hand-built messages through a LocalRuntime, and the LocalRuntime itself."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from td3_drive import topics as T
from td3_drive.driving.observation import kinematic_state, pose_from_odometry, route_from_path
from td3_drive.runtime.local import LocalRuntime
from td3_drive.runtime.messages import new_message, seconds, stamp

from support import Recorder, header, image_msg, observation_pair, straight_route
from support import odometry as odometry_msg

TP = T.Topics()


# ================================================================== camera_preprocessor
@pytest.fixture
def pre():
    from td3_drive.nodes.preprocessor import CameraPreprocessorNode

    rt = LocalRuntime()
    node = CameraPreprocessorNode(rt.context("camera_preprocessor"))
    rec = Recorder(rt)
    return rt, node, rec


def _feed(rt, t, image, x=10.0, y=0.0, yaw=0.0, odom=True):
    if odom:
        rt.publish(TP.odometry, odometry_msg(t, x, y, yaw))
    rt.publish(TP.camera, image)
    rt.spin()


def _frames(obs_msg) -> np.ndarray:
    """mono8 84x336 side-by-side -> (4, 84, 84), oldest first."""
    assert obs_msg.encoding == "mono8" and (obs_msg.height, obs_msg.width, obs_msg.step) == (84, 336, 336)
    return np.asarray(obs_msg.data, np.uint8).reshape(84, 4, 84).transpose(1, 0, 2)


RED = {"bgra8": (0, 0, 255, 255), "bgr8": (0, 0, 255), "rgb8": (255, 0, 0)}


@pytest.mark.parametrize("encoding", ["bgra8", "bgr8", "rgb8", "mono8"])
@pytest.mark.parametrize("pad", [0, 12])
def test_preprocessor_encodings(pre, encoding, pad):
    rt, node, rec = pre
    rt.publish(TP.route, straight_route(stamp_s=1.0))
    rt.publish(TP.episode_start, header(1.0, "0"))
    if encoding == "mono8":
        pixels, expected = np.full((120, 160), 200, np.uint8), 200
    else:  # pure red: grey ~76 (0.299 * 255); a channel-order mix-up would give ~29 (blue)
        pixels, expected = np.broadcast_to(np.array(RED[encoding], np.uint8), (120, 160, len(RED[encoding]))), 76
    _feed(rt, 1.0, image_msg(1.0, pixels, encoding, pad=pad))
    images, states = rec.on(TP.observation_image), rec.on(TP.observation_state)
    assert len(images) == 1 and len(states) == 1, node.drops.counts
    assert node.drops.counts == {}
    frames = _frames(images[0])
    assert np.all(np.abs(frames.astype(int) - expected) <= 1), (encoding, frames.min(), frames.max())
    assert seconds(images[0].header.stamp) == 1.0 and seconds(states[0].header.stamp) == 1.0
    assert len(states[0].name) == 53 and len(states[0].position) == 53
    assert np.isfinite(states[0].position).all()


def test_preprocessor_padding_is_stripped_on_textured_image(pre):
    rt, node, rec = pre
    rt.publish(TP.route, straight_route())
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(120, 160, 4), dtype=np.uint8)
    _feed(rt, 1.0, image_msg(1.0, pixels, "bgra8"))
    _feed(rt, 2.0, image_msg(2.0, pixels, "bgra8", pad=36))
    a, b = (_frames(m)[-1] for m in rec.on(TP.observation_image))
    assert np.array_equal(a, b)


def test_preprocessor_stack_resets_on_episode_start_and_shifts_otherwise(pre):
    rt, node, rec = pre
    rt.publish(TP.route, straight_route(stamp_s=1.0))
    rt.publish(TP.episode_start, header(1.0, "0"))
    rt.spin()
    values = [10, 60, 110, 160, 210]
    for k, v in enumerate(values):
        _feed(rt, 1.0 + 0.05 * k, image_msg(1.0 + 0.05 * k, np.full((84, 84), v, np.uint8), "mono8"))
    stacks = [_frames(m)[:, 0, 0].tolist() for m in rec.on(TP.observation_image)]
    assert stacks[0] == [10, 10, 10, 10]
    assert stacks[1] == [10, 10, 10, 60]
    assert stacks[2] == [10, 10, 60, 110]
    assert stacks[4] == [60, 110, 160, 210]
    # new episode: the first frame at/after its stamp fills the whole stack
    rt.publish(TP.route, straight_route(stamp_s=2.0))  # each episode comes with its route
    rt.publish(TP.episode_start, header(2.0, "1"))
    rt.spin()
    _feed(rt, 2.0, image_msg(2.0, np.full((84, 84), 33, np.uint8), "mono8"))
    _feed(rt, 2.05, image_msg(2.05, np.full((84, 84), 77, np.uint8), "mono8"))
    stacks = [_frames(m)[:, 0, 0].tolist() for m in rec.on(TP.observation_image)]
    assert stacks[5] == [33, 33, 33, 33]
    assert stacks[6] == [33, 33, 33, 77]


@pytest.mark.parametrize("y, sign", [(1.0, 1), (-1.0, -1)])
def test_preprocessor_signed_lateral_deviation(pre, y, sign):
    rt, node, rec = pre
    rt.publish(TP.route, straight_route())
    _feed(rt, 1.0, image_msg(1.0, np.full((84, 84), 9, np.uint8), "mono8"), x=20.0, y=y)
    (state,) = rec.on(TP.observation_state)
    lateral = state.position[list(state.name).index("lateral_deviation")]
    assert state.name[1] == "lateral_deviation"
    assert np.sign(state.position[1]) == sign and abs(lateral) > 0.1


@pytest.mark.parametrize("kind, reason", [
    ("short_step", "bad_step"), ("truncated", "size_mismatch"), ("encoding", "bad_encoding"),
    ("empty", "empty_image"),
])
def test_preprocessor_drops_bad_images(pre, kind, reason):
    rt, node, rec = pre
    rt.publish(TP.route, straight_route())
    pixels = np.zeros((120, 160, 4), np.uint8)
    msg = {
        "short_step": lambda: image_msg(1.0, pixels, "bgra8", step=160 * 4 - 4),
        "truncated": lambda: image_msg(1.0, pixels, "bgra8", truncate=100),
        "encoding": lambda: image_msg(1.0, pixels, "yuv422"),
        "empty": lambda: new_message(T.IMAGE, header=header(1.0), height=0, width=0, encoding="bgra8", step=0),
    }[kind]()
    _feed(rt, 1.0, msg)
    assert node.drops.counts == {reason: 1}
    assert rec.on(TP.observation_image) == [] and rec.on(TP.observation_state) == []
    # and the node still works afterwards (same stamp: the bad one did not advance last_stamp)
    _feed(rt, 1.0, image_msg(1.0, pixels, "bgra8"))
    assert len(rec.on(TP.observation_image)) == 1


@pytest.mark.parametrize("image_first", [True, False])
def test_preprocessor_state_is_from_the_images_own_tick(pre, image_first):
    """The bridge sends a tick's image before its odometry: the state must still be that tick's."""
    rt, node, rec = pre
    rt.publish(TP.route, straight_route())
    for k, x in enumerate([10.0, 12.0, 15.0]):
        t = 1.0 + 0.05 * k
        messages = [(TP.camera, image_msg(t, np.zeros((84, 84), np.uint8), "mono8")),
                    (TP.odometry, odometry_msg(t, x, 0.0, 0.0))]
        for topic, msg in messages if image_first else messages[::-1]:
            rt.publish(topic, msg)
        rt.spin()
    states = rec.on(TP.observation_state)
    assert [seconds(m.header.stamp) for m in states] == pytest.approx([1.0, 1.05, 1.1])
    expected = [kinematic_state(pose_from_odometry(odometry_msg(1.0 + 0.05 * k, x, 0.0, 0.0)),
                                route_from_path(straight_route())) for k, x in enumerate([10.0, 12.0, 15.0])]
    for got, want in zip(states, expected):
        np.testing.assert_allclose(np.asarray(got.position), want, rtol=1e-6, atol=1e-6)
    assert node.drops.counts == {}


def test_preprocessor_drops_nan_odometry_and_missing_route(pre):
    rt, node, rec = pre
    image = image_msg(1.0, np.zeros((84, 84), np.uint8), "mono8")
    _feed(rt, 1.0, image)  # pose present, no route yet
    assert node.drops.counts == {"no_route": 1}
    rt.publish(TP.odometry, odometry_msg(1.1, float("nan"), 0.0))
    rt.spin()
    assert node.drops.counts == {"no_route": 1, "non_finite": 1}
    assert rec.on(TP.observation_image) == []


def test_preprocessor_no_odometry_and_stale_stamp(pre):
    rt, node, rec = pre
    rt.publish(TP.route, straight_route())
    _feed(rt, 1.0, image_msg(1.0, np.zeros((84, 84), np.uint8), "mono8"), odom=False)
    assert node.drops.counts == {} and rec.on(TP.observation_image) == []  # held for its odometry
    _feed(rt, 2.0, image_msg(2.0, np.zeros((84, 84), np.uint8), "mono8"))
    assert node.drops.counts == {"no_pose_for_image": 1}  # odometry went on past it
    _feed(rt, 1.5, image_msg(1.5, np.zeros((84, 84), np.uint8), "mono8"))
    assert node.drops.counts["stale_stamp"] == 1
    assert len(rec.on(TP.observation_image)) == 1


# ================================================================== policy
def _policy(params: dict | None = None):
    from td3_drive.nodes.policy import PolicyNode

    rt = LocalRuntime({"policy": {"explore": False, "device": "cpu", **(params or {})}})
    node = PolicyNode(rt.context("policy"))
    rec = Recorder(rt)
    rt.spin()
    return rt, node, rec


@pytest.fixture(scope="module")
def policy_setup():
    """One policy node (ONNX export is the slow part); tests clear the recorder."""
    return _policy()


def _act(rt, rec, t, seed=0):
    rec.clear()
    image, state = observation_pair(t, seed)
    rt.publish(TP.observation_image, image)
    rt.publish(TP.observation_state, state)
    rt.spin()
    controls = rec.on(TP.control)
    assert len(controls) == 1
    return controls[0]


def test_policy_acts_once_per_observation_pair(policy_setup):
    rt, node, rec = policy_setup
    control = _act(rt, rec, 3.25)
    assert seconds(control.header.stamp) == 3.25
    assert -1 <= control.steer <= 1 and 0 <= control.throttle <= 1 and 0 <= control.brake <= 1
    assert control.throttle == 0 or control.brake == 0
    # half a pair does not act; a mismatched stamp does not act either
    rec.clear()
    image, state = observation_pair(4.0)
    rt.publish(TP.observation_image, image)
    rt.spin()
    _, other_state = observation_pair(4.05)
    rt.publish(TP.observation_state, other_state)
    rt.spin()
    assert rec.on(TP.control) == []


def test_policy_publishes_feature_statistics(policy_setup):
    rt, node, rec = policy_setup
    _act(rt, rec, 5.0)
    for stat in T.FEATURE_STATS:
        msgs = rec.on(TP.features("actor", stat))
        assert len(msgs) == 1 and msgs[0].__msgtype__ == T.FLOAT32 and math.isfinite(msgs[0].data), stat
    l2 = rec.on(TP.features("actor", "l2_norm"))[0].data
    assert 0 < l2 < 100
    (vector,) = rec.on(TP.features("actor", "vector"))
    assert len(vector.data) == 512 and np.isfinite(vector.data).all()
    assert np.linalg.norm(vector.data) == pytest.approx(l2, rel=1e-3)


_MAPPING_STAMPS = itertools.count(6.0, 0.05)


@pytest.mark.parametrize("action, expected", [
    ([0.3, -0.5], (0.3, 0.0, 0.5)), ([-0.2, 0.7], (-0.2, 0.7, 0.0)), ([2.0, -3.0], (1.0, 0.0, 1.0)),
])
def test_policy_control_mapping(policy_setup, monkeypatch, action, expected):
    rt, node, rec = policy_setup
    monkeypatch.setattr(node, "runner", lambda obs, state: (np.array(action, np.float32), np.full(512, 0.01, np.float32)))
    control = _act(rt, rec, next(_MAPPING_STAMPS))  # stamps must increase: repeats are dropped
    assert (control.steer, control.throttle, control.brake) == pytest.approx(expected, abs=1e-6)


def test_policy_non_finite_action_brakes(policy_setup, monkeypatch):
    rt, node, rec = policy_setup
    monkeypatch.setattr(node, "runner", lambda obs, state: (np.array([np.nan, 0.5], np.float32), np.zeros(512, np.float32)))
    before = node.drops.counts.get("non_finite_action", 0)
    control = _act(rt, rec, 7.0)
    assert (control.steer, control.throttle, control.brake) == (0.0, 0.0, 1.0)
    assert node.drops.counts["non_finite_action"] == before + 1


def _weights_msg(data: bytes) -> object:
    return new_message(T.UINT8_ARRAY, data=np.frombuffer(data, dtype=np.uint8).copy())


def _actor_action(actor, seed: int, t: float = 0.0) -> np.ndarray:
    image, state = observation_pair(t, seed)
    obs = np.asarray(image.data).reshape(84, 4, 84).transpose(1, 0, 2)
    with torch.no_grad():
        return actor(torch.from_numpy(np.ascontiguousarray(obs))[None],
                     torch.tensor(state.position, dtype=torch.float32)[None])[0].numpy()


def test_policy_weight_hot_swap_and_rejections():
    from safetensors.torch import save as save_safetensors

    from td3_drive.rl.learner import Learner, LearnerConfig
    from td3_drive.rl.weights import FORMAT, encode_actor

    rt, node, rec = _policy()
    before = _act(rt, rec, 1.0, seed=1)
    learner = Learner(LearnerConfig(), "cpu", seed=123)
    arch = learner.config.actor_architecture()
    assert arch == node.architecture
    rt.publish(TP.actor_weights, _weights_msg(encode_actor(learner.actor(), 42, arch)))
    rt.spin()
    assert node.weights_version == 42 and node.weight_rejections == {}
    after = _act(rt, rec, 2.0, seed=1)
    assert (after.steer, after.throttle - after.brake) != pytest.approx((before.steer, before.throttle - before.brake))
    expected = np.clip(_actor_action(learner.actor().eval(), seed=1), -1, 1)
    assert after.steer == pytest.approx(float(expected[0]), abs=1e-4)
    assert after.throttle - after.brake == pytest.approx(float(expected[1]), abs=1e-4)
    assert after.header.frame_id == "42"

    # rejections: garbage, wrong architecture, NaN weights; the version-42 weights stay
    garbage = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    ablation = Learner(LearnerConfig(frame_stack=3), "cpu", seed=1)  # a layer_norm change would be adopted
    wrong_arch = encode_actor(ablation.actor(), 99, ablation.config.actor_architecture())
    state = {k: v.detach().clone().contiguous() for k, v in learner.actor().state_dict().items()}
    first = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[first].view(-1)[0] = float("nan")
    nan_weights = save_safetensors(state, metadata={"format": FORMAT, "version": "100",
                                                    "architecture": arch.to_json()})
    for data in (garbage, wrong_arch, nan_weights, b""):
        rt.publish(TP.actor_weights, _weights_msg(data))
        rt.spin()
    assert node.weight_rejections == {"bad_header": 1, "wrong_architecture": 1, "non_finite": 1, "truncated": 1}
    assert sum(v for k, v in node.drops.counts.items() if k.startswith("weights_")) == 4
    assert node.weights_version == 42
    again = _act(rt, rec, 3.0, seed=1)
    assert (again.steer, again.throttle, again.brake) == (after.steer, after.throttle, after.brake)


def test_policy_exploration_topic_and_parameter(policy_setup):
    rt, node, rec = policy_setup
    node.explore = False
    off = [_act(rt, rec, 20.0 + k, seed=5) for k in range(2)]
    assert (off[0].steer, off[0].throttle, off[0].brake) == (off[1].steer, off[1].throttle, off[1].brake)
    rt.publish(TP.exploration, new_message(T.BOOL, data=True))
    rt.spin()
    assert node.explore is True
    on = _act(rt, rec, 30.0, seed=5)
    assert (on.steer, on.throttle, on.brake) != pytest.approx((off[0].steer, off[0].throttle, off[0].brake))
    rt.publish(TP.exploration, new_message(T.BOOL, data=False))
    rt.spin()
    back = _act(rt, rec, 31.0, seed=5)
    assert (back.steer, back.throttle, back.brake) == (off[0].steer, off[0].throttle, off[0].brake)
    node.explore = False

    # parameter explore: true, past the warm-up: Gaussian noise around the policy action
    rt2, node2, rec2 = _policy({"explore": True, "random_steps": 0, "exploration_noise": 0.3})
    assert node2.explore is True
    noisy = [_act(rt2, rec2, 1.0 + k, seed=5) for k in range(2)]
    assert (noisy[0].steer, noisy[0].throttle - noisy[0].brake) != pytest.approx(
        (noisy[1].steer, noisy[1].throttle - noisy[1].brake))
    for c in noisy:
        assert -1 <= c.steer <= 1 and 0 <= c.throttle <= 1 and 0 <= c.brake <= 1


# ================================================================== trainer
@pytest.fixture
def trainer(tmp_path):
    from td3_drive.nodes.trainer import TrainerNode

    rt = LocalRuntime({"trainer": {"batch_size": 8, "learning_starts": 5, "replay_capacity": 1000,
                                   "run_dir": str(tmp_path), "learner.encoder_mode": "shared", "device": "cpu",
                                   "weights_every": 5, "log_interval": 1, "checkpoint_every": 0}})
    rec = Recorder(rt)
    node = TrainerNode(rt.context("trainer"))
    yield rt, node, rec
    node.close()


def _tick(rt, t, x, collision=False, control=(0.0, 0.5, 0.0), y=0.0):
    rt.time_s = t
    rt.publish(TP.odometry, odometry_msg(t, x, y))
    if collision:
        rt.publish(TP.collision, new_message(T.COLLISION, header=header(t, "ego_vehicle/collision"), other_actor_id=7))
    image, state = observation_pair(t, seed=int(t * 100))
    rt.publish(TP.observation_image, image)
    rt.publish(TP.observation_state, state)
    steer, throttle, brake = control
    rt.publish(TP.control, new_message(T.CONTROL, header=header(t, "0"), steer=steer, throttle=throttle, brake=brake))
    rt.spin()


def _start_episode(rt, t: float, number: str = "0") -> None:
    """An episode start at ``t`` with its route (stamped like it, as the simulator and the manager do)."""
    rt.publish(TP.route, straight_route(stamp_s=t))
    rt.publish(TP.episode_start, header(t, number))
    rt.spin()


def _trainer_node(tmp_path, **params):
    from td3_drive.nodes.trainer import TrainerNode

    rt = LocalRuntime({"trainer": {"batch_size": 4, "replay_capacity": 200, "run_dir": str(tmp_path), "device": "cpu",
                                   "learner.encoder_mode": "shared", "checkpoint_every": 0, **params}})
    rec = Recorder(rt)  # before the node: it records the latched messages the node publishes at start
    return rt, TrainerNode(rt.context("trainer")), rec


def test_trainer_scripted_episode(trainer):
    rt, node, rec = trainer
    rt.spin()
    # latched at start: actor weights and exploration on
    assert len(rec.on(TP.actor_weights)) == 1 and rec.on(TP.exploration)[0].data is True
    rec.clear()
    _start_episode(rt, 1.0)
    lengths = []
    for k in range(12):
        _tick(rt, 1.0 + 0.05 * k, x=10.0 + 0.4 * k)
        lengths.append(len(node.session.replay))
    assert node.in_episode
    assert node.session.env_steps == 11 and lengths[-1] == 11 and lengths == sorted(lengths) and lengths[0] == 0
    assert node.session.learner.num_updates > 0
    assert len(rec.on(TP.reward)) == 11
    assert rec.on(TP.actor_weights), "weights are republished every weights_every updates"
    assert rec.on(TP.features("critic", "l2_norm"))
    assert node.drops.counts == {}

    # collision => terminated, reset requested with the reason, episode counted
    _tick(rt, 1.6, x=15.0, collision=True)
    (reset,) = rec.on(TP.reset_request)
    assert reset.frame_id == "collision"
    assert node.session.episodes == 1 and not node.in_episode and node.session.env_steps == 12
    assert len(node.session.episode_returns) == 1 and node.session.episode_returns[0][1] < 0  # collision penalty
    # observations after termination are ignored until the next episode_start
    steps, length, updates = node.session.env_steps, len(node.session.replay), node.session.learner.num_updates
    for k in range(3):
        _tick(rt, 1.65 + 0.05 * k, x=15.0)
    assert (node.session.env_steps, len(node.session.replay), node.session.learner.num_updates) == (steps, length, updates)
    assert len(rec.on(TP.reset_request)) == 1
    rt.publish(TP.route, straight_route(stamp_s=2.0))  # each episode comes with its route
    rt.publish(TP.episode_start, header(2.0, "1"))
    rt.spin()
    for k in range(3):
        _tick(rt, 2.0 + 0.05 * k, x=10.0 + 0.4 * k)
    assert node.in_episode and node.session.env_steps == steps + 2 and len(node.session.replay) == length + 2
    assert node.session.learner.num_updates > updates


def test_trainer_drops_bad_control_and_missing_action(trainer):
    rt, node, rec = trainer
    rt.publish(TP.route, straight_route(stamp_s=1.0))
    rt.publish(TP.episode_start, header(1.0, "0"))
    rt.spin()
    _tick(rt, 1.0, x=10.0)
    _tick(rt, 1.05, x=10.4, control=(0.0, 2.0, 0.0))  # out of range: dropped, no action for 1.05
    assert node.drops.counts.get("control_out_of_range") == 1
    _tick(rt, 1.10, x=10.8)
    assert node.drops.counts.get("missing_action") == 1
    assert node.session.env_steps == 1


def test_trainer_and_preprocessor_wait_for_the_new_episodes_route(trainer, pre):
    """teleport -> the previous route still held -> the new route: the episode starts only with it
    (CARLA's waypoint publisher re-plans seconds after the teleport)."""
    rt, node, rec = trainer
    rt.publish(TP.route, straight_route(stamp_s=0.5))  # the previous episode's
    rt.publish(TP.episode_start, header(1.0, "1"))
    rt.spin()
    for k in range(2):
        _tick(rt, 1.0 + 0.05 * k, x=10.0 + 0.4 * k)
    assert not node.in_episode and node.drops.counts == {"stale_route": 2} and rec.on(TP.reward) == []
    rt.publish(TP.route, straight_route(stamp_s=1.07))  # planned after the teleport: the episode's
    for k in range(2, 5):
        _tick(rt, 1.0 + 0.05 * k, x=10.0 + 0.4 * k)
    assert node.in_episode and node.session.env_steps == 2 and len(rec.on(TP.reward)) == 2
    assert node.drops.counts == {"stale_route": 2}

    rt_pre, pre_node, pre_rec = pre  # the preprocessor publishes no state measured on the old route
    rt_pre.publish(TP.route, straight_route(stamp_s=0.5))
    rt_pre.publish(TP.episode_start, header(1.0, "1"))
    _feed(rt_pre, 1.0, image_msg(1.0, np.zeros((84, 84), np.uint8), "mono8"))
    assert pre_rec.on(TP.observation_state) == [] and pre_node.drops.counts == {"stale_route": 1}
    rt_pre.publish(TP.route, straight_route(stamp_s=1.0))
    _feed(rt_pre, 1.05, image_msg(1.05, np.zeros((84, 84), np.uint8), "mono8"))
    assert [seconds(m.header.stamp) for m in pre_rec.on(TP.observation_state)] == [1.05]


def test_trainer_never_takes_a_watchdog_brake_as_an_action(trainer):
    """A watchdog brake stamped like an observation must not become its action (and make the
    policy's own control for that stamp a dropped duplicate)."""
    rt, node, rec = trainer
    _start_episode(rt, 1.0)
    _tick(rt, 1.0, x=10.0)
    rt.publish(TP.control, new_message(T.CONTROL, header=header(1.05, "watchdog"), brake=1.0))
    _tick(rt, 1.05, x=10.4, control=(0.25, 0.5, 0.0))
    _tick(rt, 1.10, x=10.8)
    assert node.drops.counts == {"watchdog_control": 1}
    assert node.session.env_steps == 2
    actions = node.session.replay.sample_arrays(64)["action"]  # the policy's control at 1.05 is what was stored
    assert np.isclose(actions[:, 0], 0.25).any() and not np.isclose(actions[:, 1], -1.0).any()


# ================================================================== LocalRuntime
def _f(v: float) -> object:
    return new_message(T.FLOAT32, data=v)


def test_local_runtime_fifo_order():
    rt = LocalRuntime()
    a, b = rt.context("a"), rt.context("b")
    seen: list = []
    pub_y = a.create_publisher(T.FLOAT32, "/y")
    a.create_subscription(T.FLOAT32, "/x", lambda m: (seen.append(("x", m.data)), pub_y.publish(_f(m.data * 10))))
    b.create_subscription(T.FLOAT32, "/y", lambda m: seen.append(("y", m.data)))
    b.create_subscription(T.FLOAT32, "/x", lambda m: seen.append(("x2", m.data)))
    for v in (1.0, 2.0):
        rt.publish("/x", _f(v))
    assert rt.spin() == 4
    # x(1) to both subscribers in subscription order, then x(2), then the y's they caused, in order
    assert seen == [("x", 1.0), ("x2", 1.0), ("x", 2.0), ("x2", 2.0), ("y", 10.0), ("y", 20.0)]


def test_local_runtime_latched_delivery_only_to_transient_local_late_subscribers():
    from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS

    rt = LocalRuntime()
    pub = rt.context("a").create_publisher(T.FLOAT32, "/latched", LATCHED_QOS)
    pub.publish(_f(1.0))
    pub.publish(_f(2.0))
    rt.spin()
    late, volatile = [], []
    rt.context("b").create_subscription(T.FLOAT32, "/latched", lambda m: late.append(m.data), LATCHED_QOS)
    rt.context("c").create_subscription(T.FLOAT32, "/latched", lambda m: volatile.append(m.data), RELIABLE_QOS)
    rt.spin()
    assert late == [2.0] and volatile == []
    pub.publish(_f(3.0))
    rt.spin()
    assert late == [2.0, 3.0] and volatile == [3.0]


def test_local_runtime_type_mismatch_raises():
    rt = LocalRuntime()
    ctx = rt.context("a")
    pub = ctx.create_publisher(T.FLOAT32, "/t")
    with pytest.raises(TypeError):
        ctx.create_subscription(T.BOOL, "/t", lambda m: None)
    with pytest.raises(TypeError):
        ctx.create_publisher("std_msgs/Bool", "/t")
    with pytest.raises(TypeError):
        rt.publish("/t", new_message(T.BOOL, data=True))
    with pytest.raises(TypeError):
        pub.publish(new_message(T.BOOL, data=True))
    ctx.create_subscription("std_msgs/Float32", "/t", lambda m: None)  # short type name is the same type


def test_local_runtime_timers_follow_clock():
    rt = LocalRuntime()
    ctx = rt.context("a")
    fired: list[float] = []
    ctx.create_timer(1.0, lambda: fired.append(ctx.now()))
    clock = ctx.create_publisher(T.CLOCK, "/clock")
    clock.publish(new_message(T.CLOCK, clock=stamp(0.5)))
    rt.spin()
    assert fired == [] and rt.time_s == 0.5
    clock.publish(new_message(T.CLOCK, clock=stamp(1.0)))
    rt.spin()
    assert fired == [1.0]
    clock.publish(new_message(T.CLOCK, clock=stamp(3.2)))
    rt.spin()
    assert len(fired) == 3  # deadlines 2.0 and 3.0 both passed
    rt.advance(1.0)
    assert len(fired) == 4 and rt.time_s == pytest.approx(4.2)
    with pytest.raises(ValueError):
        ctx.create_timer(0.0, lambda: None)


def test_local_runtime_spin_until_stops_and_resumes():
    rt = LocalRuntime()
    ctx = rt.context("loop")
    pub = ctx.create_publisher(T.FLOAT32, "/n")
    seen: list[float] = []

    def on(m):
        seen.append(m.data)
        if m.data < 20:
            pub.publish(_f(m.data + 1))

    ctx.create_subscription(T.FLOAT32, "/n", on)
    rt.publish("/n", _f(0.0))
    rt.spin(until=lambda: len(seen) >= 5)
    assert seen == [0.0, 1.0, 2.0, 3.0, 4.0]
    rt.spin(until=lambda: len(seen) >= 8)
    assert seen == [float(i) for i in range(8)]
    assert rt.spin() == 13 and seen[-1] == 20.0
    # a publish loop without `until` is reported, not spun forever
    ctx.create_subscription(T.FLOAT32, "/n", lambda m: pub.publish(_f(m.data)))
    rt.publish("/n", _f(100.0))
    with pytest.raises(RuntimeError):
        rt.spin(max_messages=50)


@pytest.mark.parametrize("utd_ratio", [0.5, 1.0, 2.0])
def test_trainer_utd_ratio_sets_updates_per_env_step(tmp_path, utd_ratio):
    """From learning_starts on, updates = floor((env_steps - learning_starts + 1) * utd_ratio)."""
    rt, node, _ = _trainer_node(tmp_path, learning_starts=4, utd_ratio=utd_ratio, weights_every=1000,
                                log_interval=1000)
    _start_episode(rt, 1.0)
    seen = []
    for k in range(12):
        _tick(rt, 1.0 + 0.05 * k, x=10.0 + 0.4 * k)
        seen.append((node.session.env_steps, node.session.learner.num_updates))
    node.close()
    for steps, updates in seen:
        assert updates == (math.floor((steps - 4 + 1) * utd_ratio) if steps >= 4 else 0), seen


def test_trainer_evaluation_round_is_noise_free_and_never_stored(tmp_path):
    """eval_every 1: after each training episode one evaluation episode, exploration off, its steps
    neither stored nor counted, its return logged as eval/return; then training resumes."""
    rt, node, rec = _trainer_node(tmp_path, learning_starts=1000, eval_every=1, eval_episodes=1)

    def episode(start: float, steps: int) -> None:
        _start_episode(rt, start)
        for k in range(steps):
            _tick(rt, start + 0.05 * k, x=10.0 + 0.4 * k, collision=k == steps - 1)

    rt.spin()
    assert [m.data for m in rec.on(TP.exploration)] == [True]
    episode(1.0, 5)  # training: 4 stored steps, then the collision
    assert node.session.episodes == 1 and node.session.env_steps == 4 and len(node.session.replay) == 4
    assert [m.data for m in rec.on(TP.exploration)] == [True, False]  # the next one is an evaluation
    episode(2.0, 7)
    assert node.session.episodes == 1 and node.session.env_steps == 4 and len(node.session.replay) == 4  # nothing of it kept
    assert len(node.session.eval_returns) == 1 and node.session.eval_returns[0][0] == 4
    assert [m.data for m in rec.on(TP.exploration)] == [True, False, True]  # training again
    episode(3.0, 3)
    assert node.session.episodes == 2 and node.session.env_steps == 6
    node.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/return")] == [4]
    assert len(acc.Scalars("episode/return")) == 2


def test_trainer_periodic_checkpoints_every_n_env_steps_keep_the_newest(tmp_path):
    from td3_drive.rl.checkpoint import Checkpointer

    rt, node, _ = _trainer_node(tmp_path, learning_starts=1000, checkpoint_every=3, checkpoint_keep=2)
    _start_episode(rt, 1.0)
    kept = []
    for k in range(11):  # 10 env steps: periodic checkpoints at 3, 6 and 9
        _tick(rt, 1.0 + 0.05 * k, x=10.0 + 0.4 * k)
        kept.append([p.name for p in Checkpointer(tmp_path / "checkpoints").list()])
    assert node.session.env_steps == 10
    assert kept[2] == [] and len(kept[3]) == 1  # the first one at env step 3, not before
    assert len(kept[-1]) == 2 and kept[-1] == sorted(kept[-1])  # keep 2: the checkpoint of step 3 is gone
    assert kept[-1] == kept[9] != kept[6]
    assert kept[6][-1] in kept[-1]  # step 6's survives beside step 9's
    node.close()


def test_preprocessor_counts_images_before_any_odometry(pre):
    rt, node, rec = pre
    rt.publish(TP.route, straight_route())
    for t in (1.0, 1.05):  # the bridge's odometry never comes: each image is superseded by the next
        _feed(rt, t, image_msg(t, np.zeros((84, 84), np.uint8), "mono8"), odom=False)
    assert node.drops.counts == {"no_odometry": 1} and rec.on(TP.observation_image) == []


def test_trainer_counts_an_episode_start_without_pose_or_route(trainer):
    rt, node, rec = trainer
    rt.publish(TP.episode_start, header(1.0, "0"))
    image, state = observation_pair(1.0)
    rt.publish(TP.observation_image, image)
    rt.publish(TP.observation_state, state)
    rt.spin()
    assert node.drops.counts == {"no_pose_or_route": 1} and not node.in_episode


def test_event_queue_is_bounded_and_counts_what_it_discards():
    from td3_drive.nodes.bridge import BridgeWorld
    from td3_drive.runtime.diagnostics import DropCounter
    from td3_drive.topics import Topics

    rt = LocalRuntime()
    drops = DropCounter(rt.context("w"))
    world = BridgeWorld(rt.context("w"), Topics(), drops)
    limit = BridgeWorld.HISTORY * 20
    for k in range(limit + 3):  # far-future stamps: never taken by a tick, so they pile up
        rt.publish(TP.collision, new_message(T.COLLISION, header=header(1e6 + k, "c"), other_actor_id=1))
    rt.spin()
    assert drops.counts == {"event_queue_full": 3}
    assert world.take_events().collision and world.take_events() == world.take_events(until=0.0)


def test_policy_adopts_the_architecture_its_weights_declare(tmp_path):
    """Launch files no longer read the trainer's learner.* to configure the policy (no training code at
    launch time): the policy rebuilds its actor for weights of another layer_norm / trunk_dim, and
    refuses another frame_stack with a message saying what to set."""
    import dataclasses
    import types

    from td3_drive.nodes.policy import PolicyNode
    from td3_drive.rl.learner import LearnerConfig
    from td3_drive.rl.models import build_actor
    from td3_drive.rl.weights import encode_actor

    default = LearnerConfig().actor_architecture()
    ablation = dataclasses.replace(default, layer_norm=False, trunk_dim=0)
    blob = encode_actor(build_actor(ablation), 9, ablation)
    (tmp_path / "actor.safetensors").write_bytes(blob)
    rt = LocalRuntime(parameters={"policy": {"device": "cpu", "checkpoint": str(tmp_path / "actor.safetensors")}})
    policy = PolicyNode(rt.context("policy"))
    assert policy.architecture == ablation and policy.weights_version == 9
    obs = np.zeros((4, 84, 84), np.uint8)
    action, _ = policy.runner(obs, np.zeros(53, np.float32))
    assert np.isfinite(action).all()
    policy.on_weights(types.SimpleNamespace(data=np.frombuffer(encode_actor(build_actor(default), 10, default),
                                                              np.uint8)))
    assert policy.architecture == default and policy.weights_version == 10
    three = dataclasses.replace(default, frame_stack=3)
    policy.on_weights(types.SimpleNamespace(data=encode_actor(build_actor(three), 11, three)))
    assert policy.weights_version == 10 and policy.drops.counts == {"weights_wrong_architecture": 1}
    policy.close()
