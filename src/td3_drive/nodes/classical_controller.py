"""classical_controller: the PID + Pure Pursuit baseline as a drop-in for the policy node.

With ``privileged: true`` it is the reference driver of the hazards protocol: IDM gap keeping on
the embedded simulator's ground-truth lead (/td3/ground_truth/lead), which no camera-driven
policy gets.

Subscribes odometry, the route (latched) and the front camera; on each camera image,
i.e. once per simulator tick exactly like the policy, publishes one
CarlaEgoVehicleControl stamped with the image's stamp, steered from the pose of that
tick (the bridge sends it after the image).  The image content is unused: the camera
is only the tick.  Until a route has arrived, and while a new episode's route is
still on its way, it publishes a full brake so a lockstep simulator keeps ticking.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from td3_drive import topics as T
from td3_drive.driving.classical import ClassicalConfig, PurePursuitPID
from td3_drive.driving.control import BRAKE, action_to_control_fields
from td3_drive.driving.observation import InvalidMessage, VehiclePose
from td3_drive.driving.world import CameraPoseJoin
from td3_drive.nodes.bridge import BridgeWorld, GroundTruthLead
from td3_drive.runtime.interface import RELIABLE_QOS, SENSOR_QOS, NodeContext
from td3_drive.runtime.messages import seconds
from td3_drive.runtime.node import Node
from td3_drive.runtime.ros import run_node

NODE_NAME = "classical_controller"


class ClassicalControllerNode(Node):
    """Wiring only: messages -> PurePursuitPID -> CarlaEgoVehicleControl."""

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        topics = self.topics
        self.config = self.declare_config(ClassicalConfig)
        self.controller = PurePursuitPID(self.config)
        self._last_stamp: float | None = None
        self.published = 0

        self._control_pub = ctx.create_publisher(T.CONTROL, topics.control, RELIABLE_QOS)
        self.world = BridgeWorld(ctx, topics, self.drops, events=False, on_pose=lambda: self.join.poll())
        self.join = CameraPoseJoin(self.world, self._on_tick, self.drops.drop)
        ctx.create_subscription(T.IMAGE, topics.camera, self._on_image, SENSOR_QOS)
        #: the car ahead, from the simulator (privileged driver only)
        self.lead = GroundTruthLead(ctx, topics, self.drops) if self.config.privileged else None
        self.publish_diagnostics_every(1.0)

    @property
    def pose(self) -> VehiclePose | None:
        return self.world.pose

    @property
    def route(self) -> np.ndarray | None:
        return self.world.route

    def _on_image(self, msg: Any) -> None:
        if self.route is None:
            self.drops.drop("no_route")
            return self._publish(msg.header.stamp, dict(BRAKE))
        self.join.on_image(seconds(msg.header.stamp), msg)  # the bridge sends its odometry next

    def _lead_at(self, stamp: float) -> tuple[float, float] | None:
        """The privileged driver's lead at this tick; without ground truth for it, a full stop is the safe guess."""
        if self.lead is None:
            return None
        lead = self.lead.at(stamp)
        if lead is None:
            self.drops.drop("no_ground_truth")
            return (0.0, 0.0)
        return lead

    def _on_tick(self, msg: Any, pose: VehiclePose) -> None:
        """A camera image with the pose of its own tick: one control."""
        stamp = seconds(msg.header.stamp)
        if self.world.waiting_for_route(stamp):  # never steer a new episode along the previous route
            return self._publish(msg.header.stamp, dict(BRAKE))
        new_episode = self.world.starts_episode(stamp)
        if not new_episode and self._last_stamp is not None and stamp <= self._last_stamp:
            # a repeated camera frame must not produce a second control: it would tick the world twice
            return self.drops.drop("stale_stamp", f"{stamp} <= {self._last_stamp}")
        dt = self.config.nominal_dt
        if new_episode:
            self.controller.reset()
        elif self._last_stamp is not None:
            dt = stamp - self._last_stamp
        self._last_stamp = stamp
        try:
            action = self.controller.act(pose, self.route, dt, self._lead_at(stamp))
            fields, valid = action_to_control_fields(action)
            if not valid:
                self.drops.drop("non_finite_action")
        except (InvalidMessage, ValueError) as exc:  # never crash the control loop
            self.drops.drop(getattr(exc, "reason", "controller_error"), str(exc))
            fields = dict(BRAKE)
        self._publish(msg.header.stamp, fields)

    def _publish(self, stamp_msg: Any, fields: dict) -> None:
        self._control_pub.publish(self.ctx.new(T.CONTROL, header=self.ctx.new(T.HEADER, stamp=stamp_msg), **fields))
        self.published += 1

    def status(self) -> dict[str, Any]:
        return {"published": self.published}


def main(args: list[str] | None = None) -> int:
    """``ros2 run td3_drive classical_controller``: this node alone on rclpy."""
    return run_node(NODE_NAME, ClassicalControllerNode, args=args)
