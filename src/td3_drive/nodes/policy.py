"""policy: observation -> LayerNorm CNN actor -> CarlaEgoVehicleControl.

Runs the actor on CUDA when available (ONNX Runtime on CPU), adds exploration
noise only while /td3/exploration says so (training), publishes feature
statistics (rqt_plot: /td3/features/actor/l2_norm/data) and the raw 512-d
feature vector, and hot-swaps actor weights from /td3/actor_weights: invalid
weights are rejected, counted and logged, and the old weights stay.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from td3_drive import topics as T
from td3_drive.control import action_to_control_fields
from td3_drive.diagnostics import DropCounter
from td3_drive.exploration import Exploration, ExplorationConfig
from td3_drive.inference import ActorRunner
from td3_drive.learner import LearnerConfig
from td3_drive.models import feature_stats
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, NodeContext, stamp
from td3_drive.runtime.messages import seconds
from td3_drive.weights import WeightsRejected, decode_actor

NODE_NAME = "policy"


def observation_from_messages(image_msg: Any, state_msg: Any, frame_stack: int, state_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The observation topics -> (uint8 (k, 84, 84), float32 (state_dim,)); raises ValueError if malformed."""
    if image_msg.encoding != "mono8" or image_msg.height != 84 or image_msg.width != 84 * frame_stack:
        raise ValueError(f"observation image must be mono8 84x{84 * frame_stack}")
    pixels = np.frombuffer(bytes(image_msg.data) if not isinstance(image_msg.data, np.ndarray) else image_msg.data,
                           dtype=np.uint8)
    if pixels.size != 84 * 84 * frame_stack or image_msg.step != 84 * frame_stack:
        raise ValueError("observation image size mismatch")
    obs = np.ascontiguousarray(pixels.reshape(84, frame_stack, 84).transpose(1, 0, 2))
    state = np.asarray(state_msg.position, dtype=np.float32)
    if state.shape != (state_dim,) or not np.isfinite(state).all():
        raise ValueError("observation state has the wrong size or non-finite values")
    return obs, state


class PolicyNode:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        p = ctx.parameter
        self.topics = T.Topics(p("role_name", "ego_vehicle", "CARLA role name of the ego vehicle"),
                               p("namespace", "", "prefix of the /td3 topics (multi-vehicle scale-out)"))
        config = LearnerConfig(layer_norm=p("layer_norm", True, "LayerNorm CNN (false: ablation architecture)"),
                               frame_stack=p("frame_stack", 4, "frames per observation"))
        self.architecture = config.actor_architecture()
        self.explore = p("explore", False, "add exploration noise (training); /td3/exploration overrides")
        self.publish_features = p("publish_features", True, "publish feature statistics and the feature vector")
        seed = p("seed", 0, "RNG seed of the initial weights and of exploration noise")
        self.exploration = Exploration(ExplorationConfig(
            noise_std=p("exploration_noise", 0.1, "std of Gaussian action noise while exploring"),
            random_steps=p("random_steps", 1000, "warm-up steps of random (throttle-biased) actions"),
        ), seed=seed)
        torch.manual_seed(seed)
        self.runner = ActorRunner(self.architecture, device=p("device", "auto", "auto | cpu | cuda[:N]"),
                                  backend=p("backend", "auto", "auto | onnxruntime | torch"))
        self.weights_version = -1
        checkpoint = p("checkpoint", "", "actor.safetensors or a checkpoint directory to load at start")
        if checkpoint:
            self.load_file(checkpoint)
        self.drops = DropCounter(ctx)
        self.weight_rejections: dict[str, int] = {}
        self._image: Any = None
        self._state: Any = None
        self.actions = 0
        self.last_feature_l2 = float('nan')

        self.control_pub = ctx.create_publisher(T.CONTROL, self.topics.control, RELIABLE_QOS)
        self.stat_pubs = {s: ctx.create_publisher(T.FLOAT32, self.topics.features("actor", s), RELIABLE_QOS)
                          for s in T.FEATURE_STATS}
        self.vector_pub = ctx.create_publisher(T.FLOAT32_ARRAY, self.topics.features("actor", "vector"), RELIABLE_QOS)
        self.diagnostics_pub = ctx.create_publisher(T.DIAGNOSTICS, self.topics.diagnostics, RELIABLE_QOS)
        ctx.create_subscription(T.IMAGE, self.topics.observation_image, self.on_image, RELIABLE_QOS)
        ctx.create_subscription(T.JOINT_STATE, self.topics.observation_state, self.on_state, RELIABLE_QOS)
        ctx.create_subscription(T.UINT8_ARRAY, self.topics.actor_weights, self.on_weights, LATCHED_QOS)
        ctx.create_subscription(T.BOOL, self.topics.exploration, self.on_exploration, LATCHED_QOS)
        ctx.create_timer(1.0, self.publish_diagnostics)

    # ------------------------------------------------------------------ weights
    def load_file(self, path: str) -> None:
        from pathlib import Path

        file = Path(path)
        if file.is_dir():
            file = file / "actor.safetensors"
        self.load_bytes(file.read_bytes())

    def load_bytes(self, data: bytes) -> None:
        weights = decode_actor(data, self.architecture)
        self.runner.load_state_dict(weights.state_dict)
        self.weights_version = weights.version

    def on_weights(self, msg: Any) -> None:
        try:
            data = msg.data.tobytes() if isinstance(msg.data, np.ndarray) else bytes(msg.data)
            self.load_bytes(data)
        except WeightsRejected as exc:
            self.weight_rejections[exc.reason] = self.weight_rejections.get(exc.reason, 0) + 1
            self.drops.drop(f"weights_{exc.reason}", str(exc)[:200])

    def on_exploration(self, msg: Any) -> None:
        self.explore = bool(msg.data)

    # ------------------------------------------------------------------ acting
    def on_image(self, msg: Any) -> None:
        self._image = msg
        self._maybe_act()

    def on_state(self, msg: Any) -> None:
        self._state = msg
        self._maybe_act()

    def _maybe_act(self) -> None:
        """Act once both halves of the observation with the same stamp have arrived."""
        if self._image is None or self._state is None:
            return
        image, state = self._image, self._state
        t_image, t_state = seconds(image.header.stamp), seconds(state.header.stamp)
        if t_image != t_state:
            return  # the other half is still on its way; the older one is superseded
        self._image = self._state = None
        try:
            obs, vector = observation_from_messages(image, state, self.architecture["frame_stack"],
                                                    self.architecture["state_dim"])
        except ValueError as exc:
            return self.drops.drop("bad_observation", str(exc))
        action, features = self.runner(obs, vector)
        if self.explore:
            action = self.exploration(action)
        fields, finite = action_to_control_fields(action)
        if not finite:
            self.drops.drop("non_finite_action")
        header = self.ctx.new(T.HEADER, stamp=image.header.stamp, frame_id=str(self.weights_version))
        self.control_pub.publish(self.ctx.new(T.CONTROL, header=header, **fields))
        self.actions += 1
        if self.publish_features:
            self._publish_features(features)

    def _publish_features(self, features: np.ndarray) -> None:
        stats = feature_stats(torch.from_numpy(np.asarray(features, dtype=np.float32))[None])
        self.last_feature_l2 = stats['l2_norm']
        for name, pub in self.stat_pubs.items():
            pub.publish(self.ctx.new(T.FLOAT32, data=float(stats[name])))
        self.vector_pub.publish(self.ctx.new(T.FLOAT32_ARRAY, data=np.asarray(features, dtype=np.float32)))

    def publish_diagnostics(self) -> None:
        self.diagnostics_pub.publish(self.drops.status_message(
            stamp(self.ctx, self.ctx.now()), {"actions": self.actions, "weights_version": self.weights_version}))
