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
from td3_drive.nodes.common import BridgeWorld, declare_topics
from td3_drive.observation import STATE_NAMES, FrameStack, InvalidMessage, image_to_gray84, kinematic_state
from td3_drive.runtime.interface import RELIABLE_QOS, SENSOR_QOS, NodeContext, stamp
from td3_drive.runtime.messages import seconds

NODE_NAME = "camera_preprocessor"


class CameraPreprocessorNode:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        p = ctx.parameter
        self.topics = declare_topics(ctx)
        self.frame_stack = p("frame_stack", 4, "frames per observation")
        self.max_pose_age = p("max_pose_age", 0.5, "s; older odometry than the image is dropped")
        self.stack = FrameStack(self.frame_stack)
        self.drops = DropCounter(ctx)
        self.last_stamp = -np.inf
        self.published = 0

        self.image_pub = ctx.create_publisher(T.IMAGE, self.topics.observation_image, RELIABLE_QOS)
        self.state_pub = ctx.create_publisher(T.JOINT_STATE, self.topics.observation_state, RELIABLE_QOS)
        self.diagnostics_pub = ctx.create_publisher(T.DIAGNOSTICS, self.topics.diagnostics, RELIABLE_QOS)
        self.world = BridgeWorld(ctx, self.topics, self.drops, events=False)
        ctx.create_subscription(T.IMAGE, self.topics.camera, self.on_image, SENSOR_QOS)
        ctx.create_timer(1.0, self.publish_diagnostics)

    def on_image(self, msg: Any) -> None:
        stamp = seconds(msg.header.stamp)
        if stamp <= self.last_stamp:
            return self.drops.drop("stale_stamp", f"{stamp} <= {self.last_stamp}")
        world = self.world
        if not world.ready:
            return self.drops.drop("no_odometry" if world.pose is None else "no_route")
        if stamp - world.pose_stamp > self.max_pose_age:
            return self.drops.drop("stale_odometry", f"{stamp - world.pose_stamp:.3f} s")
        try:
            frame = image_to_gray84(msg)
            state = kinematic_state(world.pose, world.route)
        except InvalidMessage as exc:
            return self.drops.drop(exc.reason, str(exc))
        self.last_stamp = stamp
        if world.starts_episode(stamp) or not self.stack.ready:
            self.stack.reset(frame)  # a new episode starts from its first frame repeated
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
