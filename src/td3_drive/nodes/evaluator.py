"""evaluator: driving metrics per episode, and episode ends, for drive / eval runs.

The same termination rules as the trainer's reward (collision, off-route, route
completed, timeout) decide when an episode ends; the metrics come from the
bridge topics only, so they are identical in CARLA and the embedded simulator.
"""
from __future__ import annotations

from typing import Any

from td3_drive import topics as T
from td3_drive.diagnostics import DropCounter
from td3_drive.metrics import EpisodeMetrics, EpisodeMetricsRecorder
from td3_drive.observation import InvalidMessage, pose_from_odometry, route_from_path
from td3_drive.reward import RewardConfig, RewardFunction, StepEvents
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS, NodeContext, dataclass_parameters, stamp
from td3_drive.runtime.messages import seconds

NODE_NAME = "evaluator"


class EvaluatorNode:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        p = ctx.parameter
        self.topics = T.Topics(p("role_name", "ego_vehicle", "CARLA role name of the ego vehicle"),
                               p("namespace", "", "prefix of the /td3 topics"))
        self.reward_config = dataclass_parameters(ctx, RewardConfig, "reward")
        self.reward_fn = RewardFunction(self.reward_config)
        self.recorder = EpisodeMetricsRecorder(self.reward_config.max_lateral_deviation,
                                               self.reward_config.goal_distance)
        self.drops = DropCounter(ctx)
        self.episodes: list[EpisodeMetrics] = []
        self.returns: list[float] = []
        self.pose = None
        self.route = None
        self.events = StepEvents()
        self.in_episode = False
        self._episode_start_s: float | None = None
        self._return = 0.0
        self.reset_pub = ctx.create_publisher(T.HEADER, self.topics.reset_request, RELIABLE_QOS)
        ctx.create_subscription(T.HEADER, self.topics.episode_start, self.on_episode_start, LATCHED_QOS)
        ctx.create_subscription(T.PATH, self.topics.route, self.on_route, LATCHED_QOS)
        ctx.create_subscription(T.ODOMETRY, self.topics.odometry, self.on_odometry, RELIABLE_QOS)
        ctx.create_subscription(T.COLLISION, self.topics.collision, self.on_collision, RELIABLE_QOS)
        ctx.create_subscription(T.LANE_INVASION, self.topics.lane_invasion, self.on_lane_invasion, RELIABLE_QOS)
        # the camera image closes a tick (the bridge and the simulator publish it last)
        ctx.create_subscription(T.IMAGE, self.topics.camera, self.on_tick, SENSOR_QOS)

    def on_episode_start(self, msg: Any) -> None:
        self._episode_start_s = seconds(msg.stamp)

    def on_route(self, msg: Any) -> None:
        try:
            self.route = route_from_path(msg)
        except InvalidMessage as exc:
            self.drops.drop(exc.reason, str(exc))

    def on_odometry(self, msg: Any) -> None:
        try:
            self.pose = pose_from_odometry(msg)
        except InvalidMessage as exc:
            self.drops.drop(exc.reason, str(exc))

    def on_collision(self, msg: Any) -> None:
        self.events.collision = True

    def on_lane_invasion(self, msg: Any) -> None:
        self.events.lane_invasions += 1

    def on_tick(self, msg: Any) -> None:
        t = seconds(msg.header.stamp)
        events, self.events = self.events, StepEvents()
        if self.pose is None or self.route is None:
            return self.drops.drop("no_pose_or_route")
        if self._episode_start_s is not None and t >= self._episode_start_s:
            self._episode_start_s = None
            self.in_episode, self._return = True, 0.0
            self.reward_fn.reset(self.pose, self.route)
            self.recorder.reset(self.route)
            self.recorder.record(t, self.pose, False, 0)
            return
        if not self.in_episode:
            return
        step = self.reward_fn.step(self.pose, self.route, events)
        self._return += step.total
        self.recorder.record(t, self.pose, events.collision, events.lane_invasions)
        if step.terminated or step.truncated:
            self.in_episode = False
            self.episodes.append(self.recorder.finish(step.reason))
            self.returns.append(self._return)
            self.reset_pub.publish(self.ctx.new(T.HEADER, stamp=stamp(self.ctx, t), frame_id=step.reason))
