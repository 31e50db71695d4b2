"""policy: observation -> LayerNorm CNN actor -> CarlaEgoVehicleControl.

Runs the actor on CUDA when available (ONNX Runtime on CPU), adds exploration
noise only while /td3/exploration says so (training), publishes feature
statistics (rqt_plot: /td3/features/actor/l2_norm/data) and the raw 512-d
feature vector, and hot-swaps actor weights from /td3/actor_weights: invalid
weights are rejected, counted and logged, and the old weights stay.

Watchdog: once observations have started, a timer on the node clock checks their
age; after ``watchdog_timeout`` s without a fresh one it publishes a full brake
(control.BRAKE, header frame_id "watchdog") every ``watchdog_period`` s, counts
it, logs, and stops as soon as observations return.  In ``lockstep`` (the bridge's
``synchronous_mode_wait_for_vehicle_control_command``, and the embedded simulator)
it only logs and counts: there a command the world does not wait for still releases
a tick (carla_ros_bridge ``bridge.py``, ``_synchronous_mode_update``), so every later
control would land one tick late; the world already stands still without our control.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from td3_drive import topics as T
from td3_drive.driving.control import BRAKE, WATCHDOG_FRAME_ID, action_to_control_fields
from td3_drive.nodes.bridge import ObservationPairer
from td3_drive.rl.checkpoint import resolve_actor_file
from td3_drive.rl.exploration import Exploration, ExplorationConfig
from td3_drive.rl.inference import ActorRunner
from td3_drive.rl.learner import LearnerConfig
from td3_drive.rl.models import feature_stats
from td3_drive.rl.weights import MAX_WEIGHT_BYTES, WeightsRejected, architecture_of, decode_actor
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, NodeContext, stamp
from td3_drive.runtime.messages import seconds
from td3_drive.runtime.node import Node
from td3_drive.runtime.ros import run_node
from td3_drive.settings import setting

NODE_NAME = "policy"


@dataclass
class PolicyConfig:
    """The policy node's parameters.  For training, ``td3-drive`` takes ``layer_norm``, ``frame_stack``
    and ``trunk_dim`` from the trainer's ``learner``; for driving, from the checkpoint."""

    layer_norm: bool = setting(LearnerConfig.layer_norm, "LayerNorm CNN (false: ablation architecture)")
    frame_stack: int = setting(LearnerConfig.frame_stack, "frames per observation")
    trunk_dim: int = setting(LearnerConfig.trunk_dim, "trunk width between encoder and actor MLP (0: none)")
    explore: bool = setting(False, "add exploration noise (training); /td3/exploration overrides")
    publish_features: bool = setting(True, "publish feature statistics and the feature vector")
    seed: int = setting(0, "RNG seed of the initial weights and of exploration noise")
    exploration_noise: float = setting(0.1, "std of Gaussian action noise while exploring (TD3 paper: 0.1)")
    random_steps: int = setting(1000, "warm-up steps of random (throttle-biased) actions")
    device: str = setting("auto", "auto | cpu | cuda[:N]")
    backend: str = setting("auto", "auto | onnxruntime | torch")
    max_weight_bytes: int = setting(MAX_WEIGHT_BYTES, "larger weight messages are rejected unparsed")
    watchdog_timeout: float = setting(0.15, "s without a fresh observation before braking (3 ticks)")
    watchdog_period: float = setting(0.05, "s between watchdog checks (and brake commands)")
    lockstep: bool = setting(True, "the world ticks once per control (wait-for-control, embedded): the watchdog "
                                   "logs but never publishes (an extra command would shift lockstep)")
    checkpoint: str = setting("", "actor.safetensors or a checkpoint directory to load at start")
    wait_for_learner: bool = setting(False, "training under ROS: hold each control until the trainer's learner_ready "
                                            "for its tick (back-pressure: the world waits for the learner), once "
                                            "the trainer has answered at all")
    learner_wait_s: float = setting(0.5, "wait_for_learner: wall seconds a control is held at most (below the "
                                         "bridge's 1 s control timeout); then it goes out and is counted")


class PolicyNode(Node):
    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.config = c = self.declare_config(PolicyConfig)
        self.architecture = LearnerConfig(layer_norm=c.layer_norm, frame_stack=c.frame_stack,
                                          trunk_dim=c.trunk_dim).actor_architecture()
        self.explore = c.explore  # the exploration topic switches it
        self.exploration = Exploration(ExplorationConfig(noise_std=c.exploration_noise, random_steps=c.random_steps),
                                       seed=c.seed)
        torch.manual_seed(c.seed)
        self.runner = ActorRunner(self.architecture, device=c.device, backend=c.backend)
        self.weights_version = -1
        self.last_observation_s: float | None = None  # node clock; None: not armed until the first frame
        self.watchdog_active = False
        self.watchdog_brakes = 0  # brake commands published by the watchdog
        self.watchdog_trips = 0  # times the watchdog engaged
        self._last_brake_s = -np.inf
        if c.checkpoint:
            self.load_file(c.checkpoint)
        self.weight_rejections: dict[str, int] = {}
        self.actions = 0
        self.last_feature_l2 = float('nan')

        self.control_pub = ctx.create_publisher(T.CONTROL, self.topics.control, RELIABLE_QOS)
        self.stat_pubs = {s: ctx.create_publisher(T.FLOAT32, self.topics.features("actor", s), RELIABLE_QOS)
                          for s in T.FEATURE_STATS}
        self.vector_pub = ctx.create_publisher(T.FLOAT32_ARRAY, self.topics.features("actor", "vector"), RELIABLE_QOS)
        self.observations = ObservationPairer(ctx, self.topics, self.architecture.frame_stack,
                                              self.architecture.state_dim, self.act, self.drops)
        ctx.create_subscription(T.UINT8_ARRAY, self.topics.actor_weights, self.on_weights, LATCHED_QOS)
        ctx.create_subscription(T.BOOL, self.topics.exploration, self.on_exploration, LATCHED_QOS)
        self.publish_diagnostics_every(1.0)
        ctx.create_timer(c.watchdog_period, self.check_watchdog)
        # back-pressure (wait_for_learner): the control of the newest tick, held for the trainer
        self._held: tuple[float, float, Any] | None = None  # (tick stamp, wall time held since, control)
        self._learner_stamp: float | None = None  # newest tick the trainer answered (None: never heard)
        self._hold_lock = threading.Lock()  # timers and subscriptions run concurrently under parallel_timers
        self.held_controls = 0
        self.learner_wait_timeouts = 0
        if c.wait_for_learner:
            wall_timer = getattr(ctx, "create_wall_timer", None)
            if wall_timer is None:
                raise ValueError("wait_for_learner needs a runtime with a wall clock (ros)")
            ctx.create_subscription(T.HEADER, self.topics.learner_ready, self.on_learner_ready, RELIABLE_QOS)
            wall_timer(min(0.05, c.learner_wait_s / 4), self._release_overdue)

    @property
    def lockstep(self) -> bool:
        """The world ticks once per control: the watchdog logs but never publishes."""
        return self.config.lockstep

    # ------------------------------------------------------------------ weights
    def load_file(self, path: str) -> None:
        """actor.safetensors, a checkpoint directory, or a run / checkpoints directory (newest checkpoint)."""
        file = resolve_actor_file(path)
        self.load_bytes(file.read_bytes())
        self.ctx.logger.info(f"{self.ctx.name}: loaded {file} (weights version {self.weights_version})")

    def load_bytes(self, data: Any) -> None:
        """Safetensors actor weights (bytes, or a message's uint8 array).

        Weights of another layer_norm / trunk_dim / hidden sizes (the trainer's ``learner.*`` or the
        checkpoint's) are adopted: the actor is rebuilt for them, so no launch file has to read the
        trainer's configuration.  Another frame_stack or state size is refused: the preprocessor's
        observations could not feed such an actor (set ``frame_stack`` for both nodes).
        """
        declared = architecture_of(data, self.config.max_weight_bytes)
        if declared != self.architecture:
            self._adopt(declared)
        weights = decode_actor(data, self.architecture, max_bytes=self.config.max_weight_bytes)
        self.runner.load_state_dict(weights.state_dict)
        self.weights_version = weights.version

    def _adopt(self, architecture: Any) -> None:
        mine = self.architecture
        if (architecture.frame_stack, architecture.state_dim, architecture.action_dim) != (
                mine.frame_stack, mine.state_dim, mine.action_dim):
            raise WeightsRejected("wrong_architecture", (
                f"weights for frame_stack {architecture.frame_stack}, state {architecture.state_dim}, action "
                f"{architecture.action_dim}; this policy observes frame_stack {mine.frame_stack}, state "
                f"{mine.state_dim}, action {mine.action_dim} (set frame_stack for policy and camera_preprocessor)"))
        self.ctx.logger.info(f"{self.ctx.name}: rebuilding the actor for the weights' architecture {architecture}")
        self.runner = ActorRunner(architecture, device=self.config.device, backend=self.config.backend)
        self.architecture = architecture

    def on_weights(self, msg: Any) -> None:
        try:
            size = len(msg.data)
            if size > self.config.max_weight_bytes:  # at the node boundary: never handed to the decoder
                raise WeightsRejected("oversized", f"{size} bytes > cap {self.config.max_weight_bytes}")
            self.load_bytes(msg.data)
        except WeightsRejected as exc:
            self.weight_rejections[exc.reason] = self.weight_rejections.get(exc.reason, 0) + 1
            self.drops.drop(f"weights_{exc.reason}", str(exc)[:200])

    def on_exploration(self, msg: Any) -> None:
        self.explore = bool(msg.data)

    # ------------------------------------------------------------------ acting
    def act(self, stamp_msg: Any, obs: np.ndarray, vector: np.ndarray) -> None:
        self.last_observation_s = self.ctx.now()
        if self.watchdog_active:
            self.watchdog_active = False
            self.ctx.logger.info(f"{self.ctx.name}: observations are back, watchdog released "
                                 f"({self.watchdog_brakes} brake commands so far)")
        action, features = self.runner(obs, vector)
        if self.explore:
            action = self.exploration(action)
        fields, finite = action_to_control_fields(action)
        if not finite:
            self.drops.drop("non_finite_action")
            features = None  # non-finite features are not published either
        header = self.ctx.new(T.HEADER, stamp=stamp_msg, frame_id=str(self.weights_version))
        self._send_or_hold(seconds(stamp_msg), self.ctx.new(T.CONTROL, header=header, **fields))
        self.actions += 1
        if self.config.publish_features and features is not None:
            if np.isfinite(features).all():
                self._publish_features(features)
            else:
                self.drops.drop("non_finite_features")

    # ------------------------------------------------------------------ back-pressure
    def _send_or_hold(self, t: float, control: Any) -> None:
        with self._hold_lock:
            hold = (self.config.wait_for_learner and self._learner_stamp is not None
                    and self._learner_stamp < t - 1e-6)
            if hold:
                previous, self._held = self._held, (t, time.monotonic(), control)
                self.held_controls += 1
        if not hold:
            self.control_pub.publish(control)
        elif previous is not None:  # a newer tick while one is held: the world did not wait; send the old one
            self.control_pub.publish(previous[2])

    def on_learner_ready(self, msg: Any) -> None:
        t = seconds(msg.stamp)
        with self._hold_lock:
            self._learner_stamp = t if self._learner_stamp is None else max(self._learner_stamp, t)
            release = self._held if self._held is not None and self._held[0] <= t + 1e-6 else None
            if release is not None:
                self._held = None
        if release is not None:
            self.control_pub.publish(release[2])

    def _release_overdue(self) -> None:
        """Wall timer: a control held longer than ``learner_wait_s`` goes out (the trainer is gone or stuck)."""
        with self._hold_lock:
            held = self._held
            if held is None or time.monotonic() - held[1] < self.config.learner_wait_s:
                return
            self._held = None
            self.learner_wait_timeouts += 1
        self.drops.drop("learner_wait_timeout", f"{self.ctx.name}: control for {held[0]:.3f} s released unanswered")
        self.control_pub.publish(held[2])

    def check_watchdog(self) -> None:
        """Timer: full brake while observations are older than ``watchdog_timeout``."""
        if self._held is not None:
            return  # we hold the control ourselves (back-pressure): the world is waiting for us, not stuck
        now = self.ctx.now()
        if self.last_observation_s is None or now <= self._last_brake_s:
            return  # not armed yet; or a clock jump fired this timer repeatedly at one instant
        if now - self.last_observation_s < self.config.watchdog_timeout - 1e-9:
            return
        if not self.watchdog_active:
            self.watchdog_active = True
            self.watchdog_trips += 1
            self.ctx.logger.warning(f"{self.ctx.name}: no observation for {now - self.last_observation_s:.3f} s "
                                    f"(timeout {self.config.watchdog_timeout} s): "
                                    + ("lockstep, the world waits for our next control" if self.lockstep
                                       else "braking"))
        if self.lockstep:
            return
        self._last_brake_s = now
        header = self.ctx.new(T.HEADER, stamp=stamp(self.ctx, now), frame_id=WATCHDOG_FRAME_ID)
        self.control_pub.publish(self.ctx.new(T.CONTROL, header=header, **BRAKE))
        self.watchdog_brakes += 1

    # ------------------------------------------------------------------ state (exact resume)
    def state_dict(self) -> dict[str, Any]:
        """JSON-able exploration state and counters (the weights come back on the latched topic)."""
        return {**{f"exploration_{k}": v for k, v in self.exploration.state_dict().items()},
                "actions": self.actions, "explore": self.explore, "weights_version": self.weights_version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.exploration.load_state_dict({k: state[f"exploration_{k}"] for k in ("rng", "ar", "steps")})
        self.actions = int(state["actions"])
        self.explore = bool(state["explore"])
        if self.weights_version != int(state["weights_version"]):
            self.ctx.logger.warning(f"{self.ctx.name}: resumed with weights version {self.weights_version}, "
                                    f"checkpoint had {state['weights_version']}")

    def _publish_features(self, features: np.ndarray) -> None:
        stats = feature_stats(features)
        self.last_feature_l2 = stats['l2_norm']
        for name, pub in self.stat_pubs.items():
            pub.publish(self.ctx.new(T.FLOAT32, data=float(stats[name])))
        self.vector_pub.publish(self.ctx.new(T.FLOAT32_ARRAY, data=np.asarray(features, dtype=np.float32)))

    def status(self) -> dict[str, Any]:
        return {"actions": self.actions, "weights_version": self.weights_version,
                "watchdog_brakes": self.watchdog_brakes, "watchdog_trips": self.watchdog_trips,
                "held_controls": self.held_controls, "learner_wait_timeouts": self.learner_wait_timeouts}


def main(args: list[str] | None = None) -> int:
    """``ros2 run td3_drive policy``: this node alone on rclpy."""
    return run_node(NODE_NAME, PolicyNode, args=args)
