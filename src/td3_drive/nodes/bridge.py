"""Subscriptions several nodes share, written once.

``BridgeWorld``: a :class:`~td3_drive.driving.world.WorldState` fed by the bridge's
odometry, route, event and episode-start topics.  ``ObservationPairer``: the two
halves of the observation (image + state) matched by stamp.  ``GroundTruthLead``: the
embedded simulator's car ahead, by stamp.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from td3_drive import topics as T
from td3_drive.driving.observation import InvalidMessage, pose_from_odometry, route_from_path
from td3_drive.driving.world import WorldState
from td3_drive.runtime.diagnostics import DropCounter
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, NodeContext
from td3_drive.runtime.messages import seconds


class BridgeWorld(WorldState):
    """A :class:`~td3_drive.driving.world.WorldState` fed by the bridge's topics (``events``: collision
    and lane invasion too); invalid messages are dropped and counted."""

    def __init__(self, ctx: NodeContext, topics: T.Topics, drops: DropCounter, events: bool = True,
                 on_pose: Callable[[], None] | None = None) -> None:
        super().__init__(drops.drop, on_pose)
        ctx.create_subscription(T.HEADER, topics.episode_start, self.on_episode_start, LATCHED_QOS)
        ctx.create_subscription(T.PATH, topics.route, self.on_route, LATCHED_QOS)
        ctx.create_subscription(T.ODOMETRY, topics.odometry, self.on_odometry, RELIABLE_QOS)
        if events:
            ctx.create_subscription(T.COLLISION, topics.collision, self.on_collision, RELIABLE_QOS)
            ctx.create_subscription(T.LANE_INVASION, topics.lane_invasion, self.on_lane_invasion, RELIABLE_QOS)

    def on_episode_start(self, msg: Any) -> None:
        self.start_episode_at(seconds(msg.stamp))

    def on_route(self, msg: Any) -> None:
        try:  # an invalid new route keeps the previous one
            self.set_route(route_from_path(msg), seconds(msg.header.stamp))
        except InvalidMessage as exc:
            self.drop(exc.reason, str(exc))

    def on_odometry(self, msg: Any) -> None:
        t = seconds(msg.header.stamp)
        if self.stale(t):  # before decoding: a late pose is dropped as late, whatever it holds
            return
        try:
            pose = pose_from_odometry(msg)
        except InvalidMessage as exc:
            return self.drop(exc.reason, str(exc))
        self.add_pose(t, pose)

    def on_collision(self, msg: Any) -> None:
        self.add_event(seconds(msg.header.stamp), "collision")

    def on_lane_invasion(self, msg: Any) -> None:
        self.add_event(seconds(msg.header.stamp), "lane_invasion")


def observation_from_messages(image_msg: Any, state_msg: Any, frame_stack: int,
                              state_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The observation topics -> (uint8 (k, 84, 84), float32 (state_dim,)); ValueError if malformed."""
    size = T.FRAME_SIZE
    if image_msg.encoding != "mono8" or image_msg.height != size or image_msg.width != size * frame_stack:
        raise ValueError(f"observation image must be mono8 {size}x{size * frame_stack}")
    data = image_msg.data
    pixels = data if isinstance(data, np.ndarray) else np.frombuffer(bytes(data), dtype=np.uint8)
    if pixels.size != size * size * frame_stack or image_msg.step != size * frame_stack:
        raise ValueError("observation image size mismatch")
    obs = np.ascontiguousarray(pixels.reshape(size, frame_stack, size).transpose(1, 0, 2))
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, rejected just below
        state = np.asarray(state_msg.position, dtype=np.float32)
    if state.shape != (state_dim,) or not np.isfinite(state).all():
        raise ValueError("observation state has the wrong size or non-finite values")
    return obs, state


class ObservationPairer:
    """Calls ``on_observation(image_msg.header.stamp, obs, state)`` once both halves of a stamp arrived."""

    def __init__(self, ctx: NodeContext, topics: T.Topics, frame_stack: int, state_dim: int,
                 on_observation: Callable[[Any, np.ndarray, np.ndarray], None], drops: DropCounter) -> None:
        self.frame_stack, self.state_dim = frame_stack, state_dim
        self.on_observation, self.drops = on_observation, drops
        self._image: Any = None
        self._state: Any = None
        self.last_stamp = -np.inf  # newest observation handed on: duplicates and reorders are dropped
        ctx.create_subscription(T.IMAGE, topics.observation_image, self.on_image, RELIABLE_QOS)
        ctx.create_subscription(T.JOINT_STATE, topics.observation_state, self.on_state, RELIABLE_QOS)

    def on_image(self, msg: Any) -> None:
        self._image = msg
        self._pair()

    def on_state(self, msg: Any) -> None:
        self._state = msg
        self._pair()

    def _pair(self) -> None:
        if self._image is None or self._state is None:
            return
        if seconds(self._image.header.stamp) != seconds(self._state.header.stamp):
            return  # the other half is on its way; an unmatched older half is superseded
        image, state, self._image, self._state = self._image, self._state, None, None
        t = seconds(image.header.stamp)
        if t <= self.last_stamp:  # acting or learning twice on one instant (or going back) is never right
            return self.drops.drop("stale_observation", f"{t} <= {self.last_stamp}")
        try:
            obs, vector = observation_from_messages(image, state, self.frame_stack, self.state_dim)
        except ValueError as exc:
            return self.drops.drop("bad_observation", str(exc))
        self.last_stamp = t
        self.on_observation(image.header.stamp, obs, vector)


class GroundTruthLead:
    """The embedded simulator's car ahead (/td3/ground_truth/lead): ``at(stamp)`` -> (gap [m], speed [m/s]),
    or None when no message of that tick came; malformed messages are dropped (``bad_ground_truth``)."""

    def __init__(self, ctx: NodeContext, topics: T.Topics, drops: DropCounter) -> None:
        self.drops = drops
        self.latest: tuple[float, float, float] | None = None  # (stamp, gap, speed)
        ctx.create_subscription(T.JOINT_STATE, topics.lead_ground_truth, self.on_lead, RELIABLE_QOS)

    def on_lead(self, msg: Any) -> None:
        if len(msg.position) != len(T.LEAD_NAMES):
            return self.drops.drop("bad_ground_truth", f"{len(msg.position)} values, need {T.LEAD_NAMES}")
        self.latest = (seconds(msg.header.stamp), float(msg.position[0]), float(msg.position[1]))

    def at(self, stamp: float) -> tuple[float, float] | None:
        if self.latest is None or self.latest[0] != stamp:
            return None
        return self.latest[1], self.latest[2]
