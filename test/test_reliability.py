"""The policy watchdog (frames stop -> brake, frames return -> drive) and the trainer's rollback
after consecutive non-finite updates (NaN rewards injected into the batches)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from td3_drive import topics as T
from td3_drive.runtime.local import LocalRuntime
from td3_drive.runtime.messages import new_message, seconds, stamp

TP = T.Topics()
DT = 0.05


def _clock(rt: LocalRuntime, t: float) -> None:
    rt.publish(TP.clock, new_message(T.CLOCK, clock=stamp(t)))  # as the simulator / bridge does


def _observation(rt: LocalRuntime, t: float) -> None:
    rng = np.random.default_rng(int(t * 100))
    head = new_message(T.HEADER, stamp=stamp(t), frame_id="ego_vehicle")
    rt.publish(TP.observation_image, new_message(T.IMAGE, header=head, height=84, width=336, encoding="mono8",
                                                 step=336, data=rng.integers(0, 256, 84 * 336, dtype=np.uint8)))
    rt.publish(TP.observation_state, new_message(T.JOINT_STATE, header=head, position=np.zeros(53)))


def test_watchdog_brakes_when_frames_stop_and_recovers() -> None:
    from td3_drive.nodes.policy import PolicyNode

    # not lockstep (the bridge without wait-for-control): the brake is what stops the car
    rt = LocalRuntime({"policy": {"device": "cpu", "backend": "torch", "explore": False,  # defaults: 0.15 s, 0.05 s
                                  "lockstep": False}})
    node = PolicyNode(rt.context("policy"))
    controls: list = []
    rt.add_tap(lambda topic, type_name, msg, t: controls.append(msg) if topic == TP.control else None)

    # not armed before the first frame: a clock running alone publishes nothing
    for k in range(10):
        _clock(rt, 0.5 + k * DT)
        rt.spin()
    assert controls == []

    t = 1.0
    for _ in range(3):  # frames flowing at 20 Hz: normal control only
        _clock(rt, t)
        _observation(rt, t)
        rt.spin()
        t += DT
    assert [c.header.frame_id for c in controls] == [str(node.weights_version)] * 3
    last_frame_t = t - DT

    # frames stop; the clock goes on
    braked_at = []
    for k in range(1, 7):
        before = len(controls)
        _clock(rt, last_frame_t + k * DT)
        rt.spin()
        new = controls[before:]
        if new:
            assert len(new) == 1 and new[0].header.frame_id == "watchdog"
            assert (new[0].throttle, new[0].steer, new[0].brake) == (0.0, 0.0, 1.0)
            braked_at.append(k)
    assert braked_at == [3, 4, 5, 6], "brake from the 3rd silent tick (0.15 s), every tick after"
    assert node.watchdog_active and node.watchdog_trips == 1 and node.watchdog_brakes == 4

    # frames resume: normal control at once, and no brake on the following ticks
    t = last_frame_t + 7 * DT
    for k in range(4):
        before = len(controls)
        _clock(rt, t)
        _observation(rt, t)
        rt.spin()
        new = controls[before:]
        if k == 0:  # the clock tick comes before its frame: the watchdog still brakes once at that instant
            assert [c.header.frame_id for c in new[:-1]] == ["watchdog"]
        control = new[-1]
        assert len(new) == (2 if k == 0 else 1)
        assert control.header.frame_id != "watchdog" and seconds(control.header.stamp) == pytest.approx(t)
        t += DT
    assert not node.watchdog_active and node.watchdog_brakes == 5

    # counted on /diagnostics
    diagnostics: list = []
    rt.add_tap(lambda topic, type_name, msg, t: diagnostics.append(msg) if topic == TP.diagnostics else None)
    _clock(rt, t + 1.0)
    _observation(rt, t + 1.0)
    rt.spin()
    values = {kv.key: kv.value for msg in diagnostics for s in msg.status for kv in s.values}
    assert values["watchdog_brakes"] == "5" and values["watchdog_trips"] == "1"


def test_watchdog_timeout_is_a_parameter() -> None:
    from td3_drive.nodes.policy import PolicyNode

    rt = LocalRuntime({"policy": {"device": "cpu", "backend": "torch", "watchdog_timeout": 0.25, "lockstep": False}})
    node = PolicyNode(rt.context("policy"))
    _clock(rt, 1.0)
    _observation(rt, 1.0)
    rt.spin()
    for k in range(1, 6):
        _clock(rt, 1.0 + k * DT)
        rt.spin()
        assert node.watchdog_brakes == (1 if k == 5 else 0)


def test_watchdog_in_lockstep_never_publishes_so_controls_stay_one_per_tick() -> None:
    """With wait-for-control, a command the bridge does not expect releases a tick anyway and
    every later control lands one tick late: the watchdog counts the stall but stays silent."""
    from td3_drive.nodes.policy import PolicyNode

    rt = LocalRuntime({"policy": {"device": "cpu", "backend": "torch", "explore": False}})  # lockstep by default
    node = PolicyNode(rt.context("policy"))
    assert node.lockstep
    controls: list = []
    rt.add_tap(lambda topic, type_name, msg, t: controls.append(msg) if topic == TP.control else None)
    for t in (1.0, 1.05):
        _clock(rt, t)
        _observation(rt, t)
        rt.spin()
    for k in range(1, 8):  # frames stop, the clock goes on
        _clock(rt, 1.05 + k * DT)
        rt.spin()
    assert node.watchdog_trips == 1 and node.watchdog_brakes == 0
    for t in (1.5, 1.55):  # frames resume: exactly one control per frame, stamped like it
        _clock(rt, t)
        _observation(rt, t)
        rt.spin()
    assert [seconds(c.header.stamp) for c in controls] == pytest.approx([1.0, 1.05, 1.5, 1.55])
    assert all(c.header.frame_id != "watchdog" for c in controls) and not node.watchdog_active


# ------------------------------------------------------------------ rollback
def _trainer(tmp_path: Path, rollback_after: int = 5):
    from td3_drive.nodes.trainer import TrainerNode

    rt = LocalRuntime({"trainer": {"run_dir": str(tmp_path / "run"), "device": "cpu", "batch_size": 4,
                                   "learning_starts": 0, "rollback_after": rollback_after,
                                   "learner.encoder_mode": "shared", "log_interval": 1000}})
    return rt, TrainerNode(rt.context("trainer"))


def _batches(node, monkeypatch, poisoned: bool) -> None:
    from td3_drive.rl.synthetic import random_batch

    def sample_arrays(batch_size):
        batch = random_batch(batch_size, "cpu", seed=node.session.learner.num_updates)
        if poisoned:
            batch.reward[:] = float("nan")
        return {name: value.numpy() for name, value in vars(batch).items()}

    monkeypatch.setattr(node.session.replay, "sample_arrays", sample_arrays)


def _model(node) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.clone() for n, m in node.session.learner.modules().items() for k, v in m.state_dict().items()}


def test_nan_rewards_roll_back_to_last_good_checkpoint(tmp_path: Path, monkeypatch, caplog) -> None:
    rt, node = _trainer(tmp_path)
    _batches(node, monkeypatch, poisoned=False)
    node.session.learn(3)
    good = _model(node)
    checkpoint = node.session.save_checkpoint()
    node.session.learn(3)  # weights move on after the checkpoint
    assert any(not torch.equal(good[k], v) for k, v in _model(node).items())

    _batches(node, monkeypatch, poisoned=True)
    with caplog.at_level(logging.ERROR):
        node.session.learn(4)
        assert node.session.rollbacks == 0 and node.session.learner.health.consecutive_bad == 4
        node.session.learn(1)  # the 5th consecutive bad update triggers the rollback
    assert node.session.rollbacks == 1
    assert any("rolled back" in r.getMessage() and str(checkpoint) in r.getMessage() for r in caplog.records)
    restored = _model(node)
    assert all(torch.equal(good[k], restored[k]) for k in good), "weights are the checkpoint's"
    health = node.session.learner.health
    assert health.total_skipped == 5 and health.consecutive_bad == 0 and not health.poisoned
    assert node.session.learner.num_updates == 11, "the update count stays monotonic (it versions the weights)"

    # learning goes on from the restored weights; the rollback is on /diagnostics
    _batches(node, monkeypatch, poisoned=False)
    node.session.learn(2)
    assert node.session.learner.health.consecutive_bad == 0 and node.session.learner.parameters_finite()
    diagnostics: list = []
    rt.add_tap(lambda topic, type_name, msg, t: diagnostics.append(msg) if topic == TP.diagnostics else None)
    rt.advance(1.0)
    values = {kv.key: kv.value for msg in diagnostics for s in msg.status for kv in s.values}
    assert values["rollbacks"] == "1" and values["skipped_updates"] == "5"


def test_rollback_without_checkpoint_is_logged_not_fatal(tmp_path: Path, monkeypatch, caplog) -> None:
    rt, node = _trainer(tmp_path, rollback_after=3)
    _batches(node, monkeypatch, poisoned=True)
    with caplog.at_level(logging.ERROR):
        node.session.learn(7)
    assert node.session.rollbacks == 0 and node.session.learner.health.total_skipped == 7
    assert sum("no checkpoint" in r.getMessage() for r in caplog.records) == 2


# ------------------------------------------------------------------ shutdown keeps what was trained
def _drive_episode(tmp_path: Path, ticks: int, **params):
    from td3_drive.nodes.trainer import TrainerNode

    from support import header, observation_pair, straight_route
    from support import odometry as odometry_msg

    rt = LocalRuntime({"trainer": {"run_dir": str(tmp_path / "run"), "device": "cpu", "batch_size": 4,
                                   "learning_starts": 3, "learner.encoder_mode": "shared", "log_interval": 1000,
                                   "checkpoint_every": 0, "replay_capacity": 100, **params}})
    node = TrainerNode(rt.context("trainer"))
    tp = T.Topics()
    for topic, msg in ((tp.route, straight_route(stamp_s=1.0)), (tp.episode_start, header(1.0, "0"))):
        rt.publish(topic, msg)
    for k in range(ticks):
        t = 1.0 + 0.05 * k
        image, state = observation_pair(t, seed=k)
        for topic, msg in ((tp.odometry, odometry_msg(t, 10 + 0.4 * k, 0.0)), (tp.observation_image, image),
                           (tp.observation_state, state),
                           (tp.control, new_message(T.CONTROL, header=header(t, "0"), throttle=0.5))):
            rt.publish(topic, msg)
        rt.spin()
    return node


def test_close_writes_a_final_checkpoint_and_resume_continues_from_it(tmp_path: Path) -> None:
    node = _drive_episode(tmp_path, 12)
    assert node.session.env_steps == 11 and node.session.checkpointer.latest() is None
    node.close()  # what Ctrl-C under ros2 launch ends with
    assert node.session.checkpointer.latest() is not None
    resumed = _drive_episode(tmp_path, 0, resume=True)
    assert resumed.session.env_steps == 11 and resumed.session.learner.num_updates == node.session.learner.num_updates
    resumed.close()
    assert len(resumed.session.checkpointer.list()) == 1, "nothing new to save: no second checkpoint"


def test_disk_replay_newer_than_the_checkpoint_is_kept_and_reported(tmp_path: Path, caplog) -> None:
    node = _drive_episode(tmp_path, 6, replay_on_disk=True)
    node.session.save_checkpoint()
    node.session.replay.buffers[0].add(np.zeros(2, np.float32), 0.0, np.zeros((84, 84), np.uint8),
                               np.zeros(53, np.float32), False, False)
    node.session.replay.flush()  # the memmap moved on after the checkpoint (a crash before the next one)
    with caplog.at_level(logging.WARNING):
        resumed = _drive_episode(tmp_path, 0, replay_on_disk=True, resume=True)
    assert resumed.session.replay.buffers[0].written == 7 and resumed.session.env_steps == 5
    assert any("not an exact resume" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="needs checkpoint_replay"):
        _drive_episode(tmp_path / "x", 0, replay_on_disk=True, checkpoint_episodes=1)


# ------------------------------------------------------------------ non-finite outputs are never passed on
def test_non_finite_features_are_counted_not_published() -> None:
    """A finite action from non-finite features still drives; the features are not published."""
    from td3_drive.nodes.policy import PolicyNode

    rt = LocalRuntime({"policy": {"device": "cpu", "backend": "torch", "explore": False}})
    node = PolicyNode(rt.context("policy"))
    published: dict[str, int] = {}
    rt.add_tap(lambda topic, type_name, msg, t: published.__setitem__(topic, published.get(topic, 0) + 1))
    features = [np.full(512, np.nan, np.float32), np.ones(512, np.float32)]
    node.runner = lambda obs, state: (np.array([0.1, 0.3], np.float32), features.pop(0))
    for t in (1.0, 1.05):
        _clock(rt, t)
        _observation(rt, t)
        rt.spin()
    assert node.drops.counts == {"non_finite_features": 1}
    assert published[TP.control] == 2 and published[TP.features("actor", "l2_norm")] == 1


def test_a_poisoned_learner_is_neither_checkpointed_nor_exported(tmp_path: Path) -> None:
    rt, node = _trainer(tmp_path)
    node.session.config.checkpoint_every = 10
    weights: list = []
    rt.add_tap(lambda topic, type_name, msg, t: weights.append(msg) if topic == TP.actor_weights else None)
    with torch.no_grad():
        node.session.learner.actor_head.net[0].weight[0, 0] = float("nan")
    node.session.env_steps = 10  # a checkpoint is due
    node.session._learn_and_checkpoint()
    node.session.publish_weights()
    rt.spin()
    assert node.drops.counts == {"checkpoint_skipped_non_finite": 1, "weights_not_exported_non_finite": 1}
    assert node.session.checkpointer.latest() is None and weights == []
