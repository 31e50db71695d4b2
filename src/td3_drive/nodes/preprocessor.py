"""camera_preprocessor: bridge camera + odometry + route -> observation topics.

Publishes, stamped with the camera image's stamp:
  /td3/observation/image  mono8, the 4-frame stack side by side (84 x 336): rqt_image_view
  /td3/observation/state  JointState, names = kinematic vector labels: rqt_plot
The stack restarts (first frame repeated) at each /td3/episode_start.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from td3_drive import topics as T
from td3_drive.diagnostics import DropCounter
from td3_drive.observation import (
    STATE_NAMES, FrameStack, InvalidMessage, image_to_gray84, kinematic_state, pose_from_odometry, route_from_path,
)
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS, NodeContext, stamp
from td3_drive.runtime.messages import seconds

NODE_NAME = "camera_preprocessor"


class CameraPreprocessorNode:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        p = ctx.parameter
        self.topics = T.Topics(p("role_name", "ego_vehicle", "CARLA role name of the ego vehicle"),
                               p("namespace", "", "prefix of the /td3 topics (multi-vehicle scale-out)"))
        self.frame_stack = p("frame_stack", 4, "frames per observation")
        self.max_pose_age = p("max_pose_age", 0.5, "s; older odometry than the image is dropped")
        self.stack = FrameStack(self.frame_stack)
        self.drops = DropCounter(ctx)
        self.pose = None
        self.pose_stamp = -np.inf
        self.route: np.ndarray | None = None
        self.episode_start_s = -np.inf
        self._stack_episode_s: float | None = None  # episode the current stack belongs to
        self.last_stamp = -np.inf
        self.published = 0

        self.image_pub = ctx.create_publisher(T.IMAGE, self.topics.observation_image, RELIABLE_QOS)
        self.state_pub = ctx.create_publisher(T.JOINT_STATE, self.topics.observation_state, RELIABLE_QOS)
        self.diagnostics_pub = ctx.create_publisher(T.DIAGNOSTICS, self.topics.diagnostics, RELIABLE_QOS)
        ctx.create_subscription(T.ODOMETRY, self.topics.odometry, self.on_odometry, RELIABLE_QOS)
        ctx.create_subscription(T.PATH, self.topics.route, self.on_route, LATCHED_QOS)
        ctx.create_subscription(T.HEADER, self.topics.episode_start, self.on_episode_start, LATCHED_QOS)
        ctx.create_subscription(T.IMAGE, self.topics.camera, self.on_image, SENSOR_QOS)
        ctx.create_timer(1.0, self.publish_diagnostics)

    def on_odometry(self, msg: Any) -> None:
        try:
            self.pose = pose_from_odometry(msg)
            self.pose_stamp = seconds(msg.header.stamp)
        except InvalidMessage as exc:
            self.drops.drop(exc.reason, str(exc))

    def on_route(self, msg: Any) -> None:
        try:
            self.route = route_from_path(msg)
        except InvalidMessage as exc:
            self.drops.drop(exc.reason, str(exc))

    def on_episode_start(self, msg: Any) -> None:
        self.episode_start_s = seconds(msg.stamp)

    def on_image(self, msg: Any) -> None:
        stamp = seconds(msg.header.stamp)
        if stamp <= self.last_stamp:
            return self.drops.drop("stale_stamp", f"{stamp} <= {self.last_stamp}")
        if self.pose is None or self.route is None:
            return self.drops.drop("no_odometry" if self.pose is None else "no_route")
        if stamp - self.pose_stamp > self.max_pose_age:
            return self.drops.drop("stale_odometry", f"{stamp - self.pose_stamp:.3f} s")
        try:
            frame = image_to_gray84(msg)
            state = kinematic_state(self.pose, self.route)
        except InvalidMessage as exc:
            return self.drops.drop(exc.reason, str(exc))
        self.last_stamp = stamp
        episode = self.episode_start_s if stamp >= self.episode_start_s else self._stack_episode_s
        if episode != self._stack_episode_s or not self.stack.ready:
            self.stack.reset(frame)
            self._stack_episode_s = episode
        else:
            self.stack.push(frame)
        self.publish(msg.header.stamp, self.stack.side_by_side(), state)

    def publish(self, stamp: Any, image: np.ndarray, state: np.ndarray) -> None:
        ctx = self.ctx
        header = ctx.new(T.HEADER, stamp=stamp, frame_id="ego_vehicle")
        height, width = image.shape
        self.image_pub.publish(ctx.new(T.IMAGE, header=header, height=height, width=width, encoding="mono8",
                                       is_bigendian=0, step=width, data=image.reshape(-1)))
        self.state_pub.publish(ctx.new(T.JOINT_STATE, header=header, name=list(STATE_NAMES),
                                       position=state.astype(np.float64)))
        self.published += 1

    def publish_diagnostics(self) -> None:
        self.diagnostics_pub.publish(self.drops.status_message(
            stamp(self.ctx, self.ctx.now()), {"published": self.published}))
