"""camera_preprocessor: bridge camera + odometry + route -> observation topics.

Publishes, stamped with the camera image's stamp:
  /td3/observation/image  mono8, the 4-frame stack side by side (84 x 336): rqt_image_view
  /td3/observation/state  JointState, names = kinematic vector labels: rqt_plot
The state comes from the odometry of the image's own tick (the bridge sends it after
the image: the image waits for it).  The stack restarts (first frame repeated) at each
/td3/episode_start.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from td3_drive import topics as T
from td3_drive.driving.observation import (
    STATE_NAMES,
    FrameAblation,
    FrameStack,
    ImageConverter,
    InvalidMessage,
    VehiclePose,
    kinematic_state,
    to_gray84,
)
from td3_drive.driving.world import CameraPoseJoin
from td3_drive.nodes.bridge import BridgeWorld
from td3_drive.runtime.interface import RELIABLE_QOS, SENSOR_QOS, NodeContext
from td3_drive.runtime.messages import seconds
from td3_drive.runtime.node import Node
from td3_drive.runtime.ros import run_node
from td3_drive.settings import setting

NODE_NAME = "camera_preprocessor"


@dataclass
class PreprocessorConfig:
    frame_stack: int = setting(4, "frames per observation (td3-drive: the trainer's learner.frame_stack)")
    image_backend: str = setting("auto", "auto (cv_bridge if installed) | cv_bridge | rosbags")
    image_ablation: str = setting("none", "what the policy sees instead of the camera, to measure its use: none | "
                                          "blank (zeros) | shuffled (the previous episode's frames); eval --image")


class CameraPreprocessorNode(Node):
    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.config = self.declare_config(PreprocessorConfig)
        self.stack = FrameStack(self.config.frame_stack)
        self.converter = ImageConverter(self.config.image_backend)
        self.ablation = FrameAblation(self.config.image_ablation)
        if self.config.image_ablation != "none":
            ctx.logger.warning(f"{ctx.name}: image_ablation {self.config.image_ablation}: the policy does not see "
                               "the camera")
        ctx.logger.info(f"{ctx.name}: camera images converted with {self.converter.backend}")
        self.last_stamp = -np.inf
        self.published = 0

        self.image_pub = ctx.create_publisher(T.IMAGE, self.topics.observation_image, RELIABLE_QOS)
        self.state_pub = ctx.create_publisher(T.JOINT_STATE, self.topics.observation_state, RELIABLE_QOS)
        self.world = BridgeWorld(ctx, self.topics, self.drops, events=False, on_pose=lambda: self.join.poll())
        self.join = CameraPoseJoin(self.world, self.on_tick, self.drops.drop)
        ctx.create_subscription(T.IMAGE, self.topics.camera, self.on_image, SENSOR_QOS)
        self.publish_diagnostics_every(1.0)

    def on_image(self, msg: Any) -> None:
        stamp = seconds(msg.header.stamp)
        if stamp <= self.last_stamp:
            return self.drops.drop("stale_stamp", f"{stamp} <= {self.last_stamp}")
        if self.world.route is None:
            return self.drops.drop("no_route")
        try:
            # bad images are counted on arrival, not when their pose comes
            frame = to_gray84(self.converter(msg), msg.encoding)
        except InvalidMessage as exc:
            return self.drops.drop(exc.reason, str(exc))
        self.join.on_image(stamp, (msg.header.stamp, frame))

    def on_tick(self, image: tuple[Any, np.ndarray], pose: VehiclePose) -> None:
        """An image (its stamp message and 84x84 frame) with the pose of its own tick."""
        stamp_msg, frame = image
        stamp = seconds(stamp_msg)
        world = self.world
        if world.waiting_for_route(stamp):  # a state measured against the previous episode's route
            return
        try:
            state = kinematic_state(pose, world.route)
        except InvalidMessage as exc:
            return self.drops.drop(exc.reason, str(exc))
        self.last_stamp = stamp
        new_episode = world.starts_episode(stamp) or not self.stack.ready
        frame = self.ablation(frame, new_episode)
        if new_episode:
            self.stack.reset(frame)  # a new episode starts from its first frame repeated
        else:
            self.stack.push(frame)
        self.publish(stamp_msg, self.stack.side_by_side(), state)

    def publish(self, stamp: Any, image: np.ndarray, state: np.ndarray) -> None:
        ctx = self.ctx
        header = ctx.new(T.HEADER, stamp=stamp, frame_id="ego_vehicle")
        height, width = image.shape
        self.image_pub.publish(ctx.new(T.IMAGE, header=header, height=height, width=width, encoding="mono8",
                                       is_bigendian=0, step=width, data=image.reshape(-1)))
        self.state_pub.publish(ctx.new(T.JOINT_STATE, header=header, name=list(STATE_NAMES),
                                       position=state.astype(np.float64)))
        self.published += 1

    def status(self) -> dict[str, Any]:
        return {"published": self.published}


def main(args: list[str] | None = None) -> int:
    """``ros2 run td3_drive camera_preprocessor``: this node alone on rclpy."""
    return run_node(NODE_NAME, CameraPreprocessorNode, args=args)
