"""Scale-out: several vehicle pipelines feeding one trainer, and arrival order under ROS 2.

The trainer must learn from every vehicle (each in its own replay stream), end and
reset only the vehicle whose episode ended, and assemble each transition from the
observation, control, pose and events of the right stamps whatever order the
topics deliver them in.
"""
from __future__ import annotations

import numpy as np
import pytest

from td3_drive import topics as T
from td3_drive.runtime.local import LocalRuntime
from td3_drive.runtime.messages import new_message, seconds

from support import Recorder, control, header, observation_pair, straight_route
from support import odometry as odometry_msg
from support import send as _send

V0, V1 = T.Topics("hero0", "v0"), T.Topics("hero1", "v1")
BASE = {"batch_size": 8, "learning_starts": 5, "replay_capacity": 1000, "learner.encoder_mode": "shared",
        "device": "cpu", "weights_every": 5, "log_interval": 1, "checkpoint_every": 0}


def _trainer(tmp_path, **params):
    from td3_drive.nodes.trainer import TrainerNode

    rt = LocalRuntime({"trainer": {**BASE, "run_dir": str(tmp_path), **params}})
    rec = Recorder(rt)
    return rt, TrainerNode(rt.context("trainer")), rec


def _two_vehicle_trainer(tmp_path, **params):
    return _trainer(tmp_path, vehicle_namespaces=["v0", "v1"], vehicle_role_names=["hero0", "hero1"], **params)


def _control(tp: T.Topics, t: float, steer: float) -> tuple[str, object]:
    return tp.control, control(t, steer, throttle=0.5, frame_id="0")


def _tick_messages(tp: T.Topics, t: float, x: float, collision: bool = False) -> list[tuple[str, object]]:
    image, state = observation_pair(t, seed=int(t * 100) + (7 if tp.namespace == "v1" else 0))
    out = [(tp.odometry, odometry_msg(t, x, 0.0))]
    if collision:
        out.append((tp.collision, new_message(T.COLLISION, header=header(t, "c"), other_actor_id=3)))
    return out + [(tp.observation_image, image), (tp.observation_state, state)]


def _start(rt, tp: T.Topics, t: float) -> None:
    _send(rt, [(tp.route, straight_route(stamp_s=t)), (tp.episode_start, header(t, "0"))])


def _drive_tick(rt, tp: T.Topics, k: int, control: str = "valid", odometry: bool = True) -> float:
    """Tick k of an episode started at 1.0 s, in bridge order: pose, observation, control.

    ``control``: "valid", "invalid" (throttle 3: dropped by the trainer), or "none"."""
    t = 1.0 + 0.05 * k
    messages = [(tp.odometry, odometry_msg(t, 10 + 0.4 * k, 0.0, speed=8.0))] if odometry else []
    messages += _obs_msgs(tp, t, k)
    if control == "valid":
        messages.append(_control(tp, t, 0.0))
    elif control == "invalid":
        messages.append((tp.control, new_message(T.CONTROL, header=header(t, "0"), throttle=3.0)))
    _send(rt, messages)
    return t


def _obs_msgs(tp: T.Topics, t: float, seed: int) -> list:
    image, state = observation_pair(t, seed=seed)
    return [(tp.observation_image, image), (tp.observation_state, state)]


def test_one_trainer_learns_from_two_vehicles_and_resets_only_the_one_that_crashed(tmp_path):
    rt, node, rec = _two_vehicle_trainer(tmp_path)
    rt.spin()
    # latched per vehicle: exploration on in each namespace; one weights topic for all
    assert rec.on(V0.exploration)[0].data is True and rec.on(V1.exploration)[0].data is True
    assert len(rec.on(V0.actor_weights)) == 1 and V0.actor_weights == V1.actor_weights == "/td3/actor_weights"
    _start(rt, V0, 1.0)
    _start(rt, V1, 1.0)
    for k in range(10):
        t = 1.0 + 0.05 * k
        rt.time_s = t
        # v0 in order; v1's control for t arrives only after its observation of t + dt
        _send(rt, _tick_messages(V0, t, 10 + 0.4 * k) + [_control(V0, t, 0.25)])
        _send(rt, _tick_messages(V1, t, 20 + 0.4 * k))
        if k:
            _send(rt, [_control(V1, t - 0.05, -0.25)])
    assert node.drops.counts == {}
    assert [len(b) for b in node.session.replay.buffers] == [9, 9]
    assert node.session.env_steps == 18 and node.session.learner.num_updates > 0
    assert len(rec.on(V0.reward)) == 9 and len(rec.on(V1.reward)) == 9
    # each stream holds its own vehicle's actions only
    for buffer, steer in zip(node.session.replay.buffers, (0.25, -0.25)):
        assert np.allclose(buffer.sample(32).action[:, 0], steer)  # action = (steer, throttle - brake)
    both = node.session.replay.sample(256).action[:, 0].numpy()
    assert set(np.round(both, 2)) == {0.25, -0.25}

    # v1 crashes: only v1 is reset; v0 drives on
    t = 1.5
    _send(rt, [_control(V1, 1.45, -0.25)])
    _send(rt, _tick_messages(V1, t, 24.0, collision=True))
    _send(rt, [_control(V1, t, -0.25)])
    assert [m.frame_id for m in rec.on(V1.reset_request)] == ["collision"] and rec.on(V0.reset_request) == []
    assert node.session.episodes == 1 and node.vehicles[0].in_episode and not node.vehicles[1].in_episode
    _send(rt, _tick_messages(V0, t, 14.0) + [_control(V0, t, 0.25)])
    assert len(node.session.replay.buffers[0]) == 10 and node.drops.counts == {}


def _replay_arrays(node) -> dict[str, np.ndarray]:
    state = node.session.replay.state_dict()
    return {k: np.asarray(v) for k, v in state.items() if isinstance(v, np.ndarray)}


def _run_single(tmp_path, reorder: bool):
    """Ten ticks with a lane invasion; ``reorder``: each control, event and pose arrives after the
    observation of its tick (the control only after the next observation)."""
    rt, node, rec = _trainer(tmp_path, learning_starts=10**6)
    tp = T.Topics()
    _start(rt, tp, 1.0)
    late: list = []
    for k in range(10):
        t = 1.0 + 0.05 * k
        rt.time_s = t
        image, state = observation_pair(t, seed=k)
        odometry = (tp.odometry, odometry_msg(t, 10 + 0.35 * k, 0.1 * k, speed=7.0))
        invasion = [(tp.lane_invasion, new_message(T.LANE_INVASION, header=header(t, "l")))] if k == 4 else []
        control = _control(tp, t, 0.1 * k)
        if not reorder or k == 0:
            _send(rt, [odometry, *invasion, (tp.observation_image, image), (tp.observation_state, state), control])
        else:  # the observation first; the pose, the events and the control afterwards
            _send(rt, [(tp.observation_image, image), (tp.observation_state, state)])
            _send(rt, late + [*invasion, odometry])
            late = [control]
    _send(rt, late)
    return node, [m.data for m in rec.on(tp.reward)]


def test_reordered_topics_give_the_same_transitions_and_rewards(tmp_path):
    in_order, rewards = _run_single(tmp_path / "a", reorder=False)
    reordered, rewards_reordered = _run_single(tmp_path / "b", reorder=True)
    assert in_order.drops.counts == {} and reordered.drops.counts == {}
    assert len(rewards) == 9 and rewards_reordered == rewards
    assert min(rewards) < rewards[0] - 0.1  # the lane invasion stamped at tick 4 is in its own step
    a, b = _replay_arrays(in_order), _replay_arrays(reordered)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_an_event_later_than_its_pose_counts_in_the_next_step_never_lost(tmp_path):
    rt, node, rec = _trainer(tmp_path, learning_starts=10**6)
    tp = T.Topics()
    _start(rt, tp, 1.0)
    for k in range(4):
        t = _drive_tick(rt, tp, k)
        if k == 1:  # stamped 1.05, delivered after that step was scored
            _send(rt, [(tp.collision, new_message(T.COLLISION, header=header(t, "c"), other_actor_id=3))])
    assert [m.frame_id for m in rec.on(tp.reset_request)] == ["collision"]
    assert len(rec.on(tp.reward)) == 2 and node.session.episodes == 1


def test_lost_step_resyncs_the_reward_and_keeps_the_episode_clock(tmp_path):
    rt, node, rec = _trainer(tmp_path, learning_starts=10**6, **{"reward.max_episode_steps": 6})
    tp = T.Topics()
    _start(rt, tp, 1.0)
    for k in range(6):
        _drive_tick(rt, tp, k, control="invalid" if k == 2 else "valid")  # tick 2's control is lost
    assert node.drops.counts == {"control_out_of_range": 1, "missing_action": 1}
    rewards = [m.data for m in rec.on(tp.reward)]
    # the step after the gap is scored from the pose it restarted at: 0.4 m of progress, not 0.8
    assert len(rewards) == 4 and max(rewards) - min(rewards) < 0.05
    # the lost step counts towards the time limit: 4 scored + 1 lost = 5 < 6 steps, still running
    assert node.in_episode and node.vehicles[0].scorer.reward_fn.steps == 5


def test_vehicle_parameters_are_checked(tmp_path):
    with pytest.raises(ValueError, match="vehicle_role_names has 1 entries"):
        _trainer(tmp_path, vehicle_namespaces=["v0", "v1"], vehicle_role_names=["hero0"])
    with pytest.raises(ValueError, match="share a role name"):
        _trainer(tmp_path, vehicle_namespaces=["v0", "v1"], vehicle_role_names=["hero0", "hero0"])
    with pytest.raises(ValueError, match="needs one vehicle"):
        _two_vehicle_trainer(tmp_path, checkpoint_episodes=1)


def test_two_vehicle_checkpoint_restores_both_replay_streams(tmp_path):
    rt, node, _ = _two_vehicle_trainer(tmp_path, checkpoint_replay=True, learning_starts=10**6)
    _start(rt, V0, 1.0)
    _start(rt, V1, 1.0)
    for k in range(6):
        t = 1.0 + 0.05 * k
        _send(rt, _tick_messages(V0, t, 10 + 0.4 * k) + [_control(V0, t, 0.5)])
        if k < 4:
            _send(rt, _tick_messages(V1, t, 20 + 0.4 * k) + [_control(V1, t, -0.5)])
    node.session.save_checkpoint()
    node.close()
    rt2, resumed, _ = _two_vehicle_trainer(tmp_path, checkpoint_replay=True, resume=True)
    assert [len(b) for b in resumed.session.replay.buffers] == [5, 3] and resumed.session.env_steps == 8
    x, y = node.session.replay.sample(16), resumed.session.replay.sample(16)
    assert all(np.array_equal(getattr(x, f).numpy(), getattr(y, f).numpy()) for f in ("obs", "action", "reward"))
    resumed.close()


def test_embedded_two_vehicle_graph_trains_one_actor(tmp_path):
    """The real node classes: two simulators, preprocessors and policies, one trainer."""
    from td3_drive.app import config, embedded

    params = config.load_parameters("train", {"trainer": {"run_dir": str(tmp_path), "learning_starts": 60,
                                                            "batch_size": 16, "weights_every": 10,
                                                            "device": "cpu", "checkpoint_every": 0},
                                                "policy": {"device": "cpu", "random_steps": 50}})
    graph = embedded.build_graph(params, vehicles=2)
    try:
        graph.run(150)
        trainer = graph.nodes["trainer"]
        policies = graph.of_kind("policy")
        assert [p for p in graph.nodes] == ["v0/simulator", "v0/camera_preprocessor", "v1/simulator",
                                            "v1/camera_preprocessor", "trainer", "v0/policy", "v1/policy"]
        assert all(len(b) > 100 for b in trainer.session.replay.buffers)
        assert trainer.session.env_steps >= 2 * 140 and trainer.session.learner.num_updates > 0
        # both policies drive the trainer's newest actor (one broadcast topic)
        assert {p.weights_version for p in policies} == {trainer.session.learner.num_updates // 10 * 10}
        assert [sim.ticks for sim in graph.sims] in ([151, 150], [151, 151])  # in lockstep, one tick apart at most
        assert all(not node.drops.counts for node in graph.nodes.values())
    finally:
        graph.close()


def test_async_updates_never_block_the_callbacks(tmp_path, monkeypatch):
    """With async_updates the worker thread learns; transitions keep flowing during an update."""
    import threading

    rt, node, _ = _trainer(tmp_path, async_updates=True, learning_starts=3, batch_size=4)
    in_update, release = threading.Event(), threading.Event()
    original = node.session.learner.update

    def slow_update(batch):
        in_update.set()
        release.wait(20)  # an update that takes "forever"
        in_update.clear()
        return original(batch)

    monkeypatch.setattr(node.session.learner, "update", slow_update)
    tp = T.Topics()
    _start(rt, tp, 1.0)
    k = 0
    while not in_update.wait(0.01):
        t = 1.0 + 0.05 * k
        _send(rt, _tick_messages(tp, t, 10 + 0.4 * k) + [_control(tp, t, 0.1)])
        k += 1
        assert k < 50, "the worker never started an update"
    steps = node.session.env_steps
    for j in range(k, k + 8):  # the worker is stuck inside learner.update
        t = 1.0 + 0.05 * j
        _send(rt, _tick_messages(tp, t, 10 + 0.4 * j) + [_control(tp, t, 0.1)])
    assert in_update.is_set() and node.session.env_steps == steps + 8, "callbacks waited for the update"
    release.set()
    node.close()
    assert node.session.learner.num_updates >= 1 and node.session.checkpointer.latest() is not None


def test_episode_start_tolerates_an_early_control_and_a_late_teleport_pose(tmp_path):
    """First tick of an episode under ROS: the control (and the teleported pose) may beat the observation."""
    rt, node, rec = _trainer(tmp_path, learning_starts=10**6)
    tp = T.Topics()
    _send(rt, [(tp.route, straight_route(stamp_s=1.0)), (tp.odometry, odometry_msg(0.95, 300.0, 0.0, speed=0.0))])
    _send(rt, [(tp.episode_start, header(1.0, "0"))])
    # tick 1.0: control first, then the observation, and only then the pose after the teleport to x=10
    _send(rt, [_control(tp, 1.0, 0.0)] + _obs_msgs(tp, 1.0, 0))
    _send(rt, [(tp.odometry, odometry_msg(1.0, 10.0, 0.0, speed=8.0))])
    for k in range(1, 4):
        _drive_tick(rt, tp, k)
    assert node.drops.counts == {}
    rewards = [m.data for m in rec.on(tp.reward)]
    # anchored at x=10 (after the teleport), not at x=300: 0.4 m of progress per step, no jump
    assert len(rewards) == 3 and max(rewards) - min(rewards) < 0.05 and len(node.session.replay) == 3


def test_a_pose_that_never_comes_drops_the_step_instead_of_scoring_an_old_pose(tmp_path):
    rt, node, rec = _trainer(tmp_path, learning_starts=10**6, max_control_delay=1)
    tp = T.Topics()
    _start(rt, tp, 1.0)
    for k in range(5):
        _drive_tick(rt, tp, k, odometry=k != 2)
    # both steps that touch the missing pose (into and out of 1.10) are dropped, never scored with another pose
    assert node.drops.counts == {"no_pose_at_stamp": 2}
    assert len(rec.on(tp.reward)) == 2 and len(node.session.replay) == 2  # 1.00->1.05 and 1.15->1.20


def test_reset_request_is_stamped_in_the_vehicles_own_simulation_time(tmp_path):
    rt, node, rec = _two_vehicle_trainer(tmp_path, learning_starts=10**6)
    _start(rt, V1, 500.0)
    rt.time_s = 3.0  # the trainer's clock: another server's
    _send(rt, _tick_messages(V1, 500.0, 20.0) + [_control(V1, 500.0, 0.0)])
    _send(rt, _tick_messages(V1, 500.05, 20.4, collision=True))
    (reset,) = rec.on(V1.reset_request)
    assert seconds(reset.stamp) == pytest.approx(500.05)


def test_resume_maps_a_pre_scale_out_checkpoint_in_evaluation(tmp_path):
    import json

    rt, node, _ = _trainer(tmp_path)
    path = node.session.save_checkpoint()
    node.close()
    payload = json.loads((path / "state.json").read_text())
    state = payload["state"]
    for key in ("vehicles_evaluating", "eval_pending"):
        del state[key]
    state.update(evaluating=True, eval_left=3)
    (path / "state.json").write_text(json.dumps(payload))
    _, resumed, rec = _trainer(tmp_path, resume=True)
    assert resumed.session.evaluating[0] and resumed.session._eval_pending == 2
    rt2 = resumed.ctx._runtime
    rt2.spin()
    assert rec.on(T.Topics().exploration)[-1].data is False
    resumed.close()


def test_learning_stops_at_once_when_closing(tmp_path):
    rt, node, _ = _trainer(tmp_path)
    node.session._stop.set()
    node.session.learn(1000)  # would raise (empty replay) if it tried
    assert node.session.learner.num_updates == 0


def test_a_lost_first_step_still_counts_toward_the_time_limit(tmp_path):
    rt, node, rec = _trainer(tmp_path, learning_starts=10**6, **{"reward.max_episode_steps": 4})
    tp = T.Topics()
    _start(rt, tp, 1.0)
    for k in range(5):
        _drive_tick(rt, tp, k, control="invalid" if k == 0 else "valid")
    # 1 lost + 3 scored = 4 steps: truncated ("timeout") on the third scored step
    assert [m.frame_id for m in rec.on(tp.reset_request)] == ["timeout"] and len(rec.on(tp.reward)) == 3


def test_a_collision_from_before_the_episode_never_ends_the_new_one(tmp_path):
    """The crash that ended the last episode, delivered after the new episode's first observation."""
    rt, node, rec = _trainer(tmp_path, learning_starts=10**6)
    tp = T.Topics()
    _start(rt, tp, 1.0)
    _drive_tick(rt, tp, 0)
    _send(rt, [(tp.collision, new_message(T.COLLISION, header=header(0.95, "c"), other_actor_id=3))])
    for k in range(1, 4):
        _drive_tick(rt, tp, k)
    assert rec.on(tp.reset_request) == [] and len(rec.on(tp.reward)) == 3 and node.in_episode


def test_a_collision_during_a_lost_first_step_still_ends_the_episode(tmp_path):
    rt, node, rec = _trainer(tmp_path, learning_starts=10**6)
    tp = T.Topics()
    _start(rt, tp, 1.0)
    _drive_tick(rt, tp, 0, control="invalid")  # the step 1.00 -> 1.05 is lost
    _send(rt, [(tp.collision, new_message(T.COLLISION, header=header(1.05, "c"), other_actor_id=3))])
    for k in range(1, 3):
        _drive_tick(rt, tp, k)
    assert [m.frame_id for m in rec.on(tp.reset_request)] == ["collision"]
