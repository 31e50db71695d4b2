"""The node stack on a threaded executor, as ``ros2 launch`` runs it.

Every other behaviour test delivers messages in one thread, in order, at once.  Here each node
is a (fake) rclpy node behind :class:`~td3_drive.runtime.ros.RosContext`, and
``fake_rclpy``'s MultiThreadedExecutor runs their subscriptions and timers on a thread pool
(one mutually exclusive group per node's subscriptions, the trainer's timers in groups of their
own, its learner in its worker thread): callbacks of different nodes interleave, topics are
KEEP_LAST queues of the QoS depth, ``/clock`` is every node's time.
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from td3_drive import topics as T
from td3_drive.app import config, embedded
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, QoS
from td3_drive.runtime.parameters import for_node
from td3_drive.sim.node import SimulatorNode

from fake_rclpy import FakeRosidl, install_fake_rclpy

TICKS = 90


# --------------------------------------------------------------------------- the fake executor itself
def _node_with(monkeypatch, **kw):
    from td3_drive.runtime import ros

    rec = install_fake_rclpy(monkeypatch, **kw)
    node = sys.modules["rclpy.node"].Node("n")
    return rec, node, ros.RosContext(node, parallel_timers=True, converter=ros.MessageConverter(FakeRosidl().cls))


def _spin(rec, nodes) -> tuple[object, threading.Thread, list]:
    executor = sys.modules["rclpy.executors"].MultiThreadedExecutor(num_threads=4)
    for node in nodes:
        executor.add_node(node)
    errors: list[BaseException] = []

    def spin() -> None:
        try:
            executor.spin()
        except BaseException as exc:  # noqa: BLE001 -- the test reads it
            errors.append(exc)

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    return executor, thread, errors


def _wait(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_groups_serialise_their_callbacks_and_nothing_else(monkeypatch):
    rec, node, ctx = _node_with(monkeypatch, timer_scale=0.01)
    running, overlaps, seen = [0], [], []
    lock = threading.Lock()

    def slow(msg) -> None:  # both subscriptions share the context's one subscription group
        with lock:
            running[0] += 1
            overlaps.append(running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
            seen.append(msg.data)

    ctx.create_subscription("std_msgs/msg/Float32", "/a", slow)
    ctx.create_subscription("std_msgs/msg/Float32", "/b", slow)
    ticks = []
    ctx.create_timer(1.0, lambda: ticks.append(running[0]))  # its own group (parallel_timers)
    pub_a = ctx.create_publisher("std_msgs/msg/Float32", "/a")
    pub_b = ctx.create_publisher("std_msgs/msg/Float32", "/b")
    executor, thread, errors = _spin(rec, [node])
    for i in range(5):
        pub_a.publish(ctx.new("std_msgs/msg/Float32", data=float(i)))
        pub_b.publish(ctx.new("std_msgs/msg/Float32", data=float(10 + i)))
    _wait(lambda: len(seen) == 10)
    executor.shutdown()
    thread.join(5)
    assert not errors and max(overlaps) == 1, "one group: never two at once"
    assert seen == [0.0, 10.0, 1.0, 11.0, 2.0, 12.0, 3.0, 13.0, 4.0, 14.0], "oldest sample first"
    assert any(ticks), "the timer ran while a subscription callback was running"


def test_queues_latching_qos_matching_and_callback_errors(monkeypatch):
    rec, node, ctx = _node_with(monkeypatch)
    late, lossy, unmatched, got = [], [], [], []
    latched = ctx.create_publisher("std_msgs/msg/Bool", "/latched", LATCHED_QOS)
    latched.publish(ctx.new("std_msgs/msg/Bool", data=True))
    ctx.create_subscription("std_msgs/msg/Bool", "/latched", late.append, LATCHED_QOS)  # joins late
    ctx.create_subscription("std_msgs/msg/Bool", "/latched", unmatched.append, RELIABLE_QOS)
    best_effort = ctx.create_publisher("std_msgs/msg/Bool", "/be", QoS(depth=5, reliable=False))
    ctx.create_subscription("std_msgs/msg/Bool", "/be", got.append, RELIABLE_QOS)  # reliable asks too much
    shallow = ctx.create_publisher("std_msgs/msg/Float32", "/shallow")
    ctx.create_subscription("std_msgs/msg/Float32", "/shallow", lossy.append, QoS(depth=2, reliable=True))
    for i in range(5):
        shallow.publish(ctx.new("std_msgs/msg/Float32", data=float(i)))
    best_effort.publish(ctx.new("std_msgs/msg/Bool", data=True))
    assert rec.graph.lost == {"/shallow": 3}  # KEEP_LAST 2: the three oldest are overwritten before anyone takes them

    def broken(msg) -> None:
        raise RuntimeError("callback failed")

    ctx.create_subscription("std_msgs/msg/Bool", "/boom", broken)
    executor, thread, errors = _spin(rec, [node])
    _wait(lambda: len(lossy) == 2 and len(late) == 1)
    ctx.create_publisher("std_msgs/msg/Bool", "/boom").publish(ctx.new("std_msgs/msg/Bool", data=True))
    thread.join(10)
    assert [m.data for m in lossy] == [3.0, 4.0] and [m.data for m in late] == [True]
    assert unmatched == [] and got == []
    assert [str(e) for e in errors] == ["callback failed"], "rclpy re-raises a callback's error from spin"


def test_drop_counts_are_exact_when_counted_from_several_threads(monkeypatch):
    """The trainer counts drops in its learner thread and in callbacks of different groups at once."""
    from td3_drive.runtime.diagnostics import DropCounter

    _, _, ctx = _node_with(monkeypatch)
    drops = DropCounter(ctx)
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: a lost update shows at once
    try:
        threads = [threading.Thread(target=lambda: [drops.count("x") for _ in range(20_000)]) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert drops.counts == {"x": 80_000}


# --------------------------------------------------------------------------- the stack
class _Stack:
    """simulator -> camera_preprocessor -> policy -> control, and the trainer, one fake rclpy node each."""

    ORDER = ("simulator", "camera_preprocessor", "trainer", "policy")

    def __init__(self, monkeypatch, params: dict) -> None:
        from td3_drive.nodes.policy import PolicyNode
        from td3_drive.nodes.preprocessor import CameraPreprocessorNode
        from td3_drive.nodes.trainer import TrainerNode
        from td3_drive.runtime import ros

        self.rec = install_fake_rclpy(monkeypatch, timer_scale=0.05)
        converter = ros.MessageConverter(FakeRosidl().cls)
        classes = {"simulator": SimulatorNode, "camera_preprocessor": CameraPreprocessorNode,
                   "trainer": TrainerNode, "policy": PolicyNode}
        self.ros_nodes, self.nodes = [], {}
        for name in self.ORDER:
            node = sys.modules["rclpy.node"].Node(name, parameter_overrides=for_node(params, name))
            ctx = ros.RosContext(node, parallel_timers=name == "trainer", converter=converter)
            self.ros_nodes.append(node)
            self.nodes[name] = classes[name](ctx)

    def run(self, ticks: int, settled=lambda: True) -> None:
        """Until the simulator has published ``ticks`` ticks, every callback has returned and ``settled()``."""
        sim = self.nodes["simulator"]
        sim.start()  # its first tick waits in the queues; from here on it ticks in its control callback
        executor, thread, errors = _spin(self.rec, self.ros_nodes)
        try:
            _wait(lambda: errors or (sim.ticks >= ticks and executor.idle() and settled()))
        finally:
            executor.shutdown()
            thread.join(30)
            for node in self.nodes.values():
                if hasattr(node, "close"):
                    node.close()
        assert not errors, errors


def _params(tmp_path, **trainer) -> dict:
    return config.compose("train", 0, [], {
        "trainer": {"run_dir": str(tmp_path), "device": "cpu", "checkpoint_every": 0, "log_interval": 10,
                    "batch_size": 16, "weights_every": 5, **trainer},
        "policy": {"device": "cpu", "random_steps": 40},
        "simulator": {"other_vehicles": 1},
    })


@pytest.fixture
def capped(monkeypatch):
    """The simulator ignores controls after TICKS ticks: both runs end on the same tick."""
    on_control = SimulatorNode._on_control

    def capped_on_control(self, msg) -> None:
        if self.ticks < TICKS:
            on_control(self, msg)

    monkeypatch.setattr(SimulatorNode, "_on_control", capped_on_control)


def test_threaded_stack_stores_what_the_lockstep_graph_stores(monkeypatch, tmp_path, capped):
    """No learning (so both policies act alike): the replay filled by the threaded stack equals,
    array for array, the one filled in lockstep; no sample lost, no input dropped."""
    params = _params(tmp_path / "threads", learning_starts=10_000)
    stack = _Stack(monkeypatch, params)
    stack.run(TICKS)
    threaded = stack.nodes["trainer"]

    reference = embedded.build_graph(_params(tmp_path / "lockstep", learning_starts=10_000))
    reference.start()
    reference.runtime.spin()  # until the capped simulator stops answering
    lockstep = reference.nodes["trainer"]
    reference.close()

    assert reference.sim.ticks == stack.nodes["simulator"].ticks == TICKS
    assert stack.rec.graph.lost == {} and threaded.drops.counts == {} and lockstep.drops.counts == {}
    assert threaded.session.env_steps == lockstep.session.env_steps >= TICKS - 10
    mine, theirs = threaded.session.replay.state_dict(), lockstep.session.replay.state_dict()
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert np.array_equal(np.asarray(mine[key]), np.asarray(value)), key
    assert threaded.session.episode_returns == lockstep.session.episode_returns


def test_learner_thread_runs_beside_the_callbacks(monkeypatch, tmp_path, capped):
    """async_updates (what train.launch.py sets): gradient updates in the worker thread while the
    executor keeps delivering to the trainer, and the policy keeps driving with the weights it sends."""
    stack = _Stack(monkeypatch, _params(tmp_path, learning_starts=30, async_updates=True))
    trainer = stack.nodes["trainer"]
    updates: list[tuple[float, float]] = []
    update = trainer.session.learner.update

    def timed_update(batch):
        start = time.monotonic()
        try:
            return update(batch)
        finally:
            updates.append((start, time.monotonic()))

    trainer.session.learner.update = timed_update
    stack.run(TICKS, settled=lambda: trainer.session.updates_due() == 0)  # the worker catches up with utd_ratio
    assert updates and trainer.session.learner.num_updates == len(updates)
    trainer_callbacks = [(s, e) for node, what, s, e in stack.rec.calls if node == "trainer" and what.startswith("/")]
    inside = [c for c in trainer_callbacks if any(u0 < c[0] and c[1] < u1 for u0, u1 in updates)]
    assert inside, "some trainer callbacks ran start to end during a gradient update"
    lost = dict(stack.rec.graph.lost)
    lost.pop(T.Topics().actor_weights, None)  # depth 1 on purpose: a policy busy loading gets the newest only
    assert trainer.session.env_steps >= TICKS - 10 and lost == {}, lost
    assert stack.nodes["policy"].weights_version > 0, "the policy drove with weights the trainer learned"


def test_a_slow_learner_holds_the_world_and_keeps_utd_ratio(monkeypatch, tmp_path, capped):
    """Defect 2: with async_updates and a learner slower than the world, a real Humble run made 316
    updates for 7,061 env steps.  With ``wait_for_learner`` (train.launch.py) the policy holds each
    control until the trainer's learner_ready for its tick, so updates per env step stay >= 0.9 x
    utd_ratio while ticking, and nothing is lost or times out."""
    params = _params(tmp_path, learning_starts=30, async_updates=True, max_update_lag=1)
    config.merge(params, {"policy": {"wait_for_learner": True, "learner_wait_s": 5.0}})
    stack = _Stack(monkeypatch, params)
    trainer, sim = stack.nodes["trainer"], stack.nodes["simulator"]
    update = trainer.session.learner.update

    def slow_update(batch):
        time.sleep(0.03)  # ~30 updates/s: far slower than the fake world ticks
        return update(batch)

    trainer.session.learner.update = slow_update
    seen: list[tuple[int, int]] = []  # (env steps, updates) at every tick
    publish_tick = sim._publish_tick

    def tick(frame, episode_start):
        seen.append((trainer.session.env_steps, trainer.session.learner.num_updates))
        publish_tick(frame, episode_start)

    sim._publish_tick = tick
    stack.run(TICKS)
    steps, updates = seen[-1]
    owed = (steps - 30 + 1) * trainer.session.config.utd_ratio
    assert steps >= TICKS - 10 and updates >= 0.9 * owed, (steps, updates, owed)
    policy = stack.nodes["policy"]
    assert policy.held_controls > 0 and policy.learner_wait_timeouts == 0
    assert "learner_wait_timeout" not in policy.drops.counts
