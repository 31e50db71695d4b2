"""evaluator: driving metrics per episode, and episode ends, for drive / eval runs.

The same termination rules as the trainer's reward (collision, off-route, route
completed, timeout) decide when an episode ends; the metrics come from the
bridge topics only, so they are identical in CARLA and the embedded simulator.
"""
from __future__ import annotations

from typing import Any

from td3_drive import topics as T
from td3_drive.driving.metrics import EpisodeMetrics, EpisodeMetricsRecorder
from td3_drive.driving.observation import VehiclePose
from td3_drive.driving.reward import RewardConfig, RewardFunction
from td3_drive.driving.world import CameraPoseJoin
from td3_drive.nodes.bridge import BridgeWorld, GroundTruthLead
from td3_drive.runtime.interface import RELIABLE_QOS, SENSOR_QOS, NodeContext, stamp
from td3_drive.runtime.messages import seconds
from td3_drive.runtime.node import Node
from td3_drive.runtime.ros import run_node

NODE_NAME = "evaluator"


class EvaluatorNode(Node):
    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.reward_config = self.declare_config(RewardConfig, "reward")
        self.reward_fn = RewardFunction(self.reward_config)
        self.recorder = EpisodeMetricsRecorder(self.reward_config.max_lateral_deviation,
                                               self.reward_config.goal_distance)
        self.episodes: list[EpisodeMetrics] = []
        self.returns: list[float] = []
        self.in_episode = False
        self._return = 0.0
        self.last_stamp = float("-inf")
        self.reset_pub = ctx.create_publisher(T.HEADER, self.topics.reset_request, RELIABLE_QOS)
        self.world = BridgeWorld(ctx, self.topics, self.drops, on_pose=lambda: self.join.poll())
        # a tick is complete once its camera image and its odometry are both in (in either order)
        self.join = CameraPoseJoin(self.world, self.on_tick, self.drops.drop)
        ctx.create_subscription(T.IMAGE, self.topics.camera, self.on_image, SENSOR_QOS)
        # the embedded simulator's ground truth (headway, time to collision); CARLA has no such topic
        self.lead = GroundTruthLead(ctx, self.topics, self.drops)

    def on_image(self, msg: Any) -> None:
        t = seconds(msg.header.stamp)
        if t <= self.last_stamp:  # a repeated or reordered tick would be scored twice
            return self.drops.drop("stale_stamp", f"{t} <= {self.last_stamp}")
        self.last_stamp = t
        if self.world.route is None:
            return self.drops.drop("no_pose_or_route")
        self.join.on_image(t, t)

    def on_tick(self, t: float, pose: VehiclePose) -> None:
        if self.world.waiting_for_route(t):
            return
        events = self.world.take_events(until=t)
        route = self.world.route
        if self.world.starts_episode(t):
            self.in_episode, self._return = True, 0.0
            self.reward_fn.reset(pose, route)
            self.recorder.reset(route)
            self.recorder.record(t, pose, False, 0)
            return
        if not self.in_episode:
            return
        step = self.reward_fn.step(pose, route, events)
        self._return += step.total
        self.recorder.record(t, pose, events.collision, events.lane_invasions, self.lead.at(t))
        if step.terminated or step.truncated:
            self.in_episode = False
            metrics = self.recorder.finish(step.reason)
            self.episodes.append(metrics)
            self.returns.append(self._return)
            self.ctx.logger.info(f"{self.ctx.name}: episode {len(self.episodes)} ended ({step.reason}): "
                                 f"success {metrics.success}, route completion {metrics.route_completion:.2f}, "
                                 f"{metrics.distance_m:.0f} m, {metrics.collisions} collisions")
            self.reset_pub.publish(self.ctx.new(T.HEADER, stamp=stamp(self.ctx, t), frame_id=step.reason))


def main(args: list[str] | None = None) -> int:
    """``ros2 run td3_drive evaluator``: this node alone on rclpy."""
    return run_node(NODE_NAME, EvaluatorNode, args=args)
