"""Subscriptions several nodes share, written once.

``BridgeWorld``: the world as the bridge topics describe it (pose, route, events
since the last tick, episode starts).  ``CameraPoseJoin``: a camera image handed on
with the pose of its own tick.  ``ObservationPairer``: the two halves of the
observation (image + state) matched by stamp.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

import numpy as np

from td3_drive import topics as T
from td3_drive.diagnostics import DropCounter
from td3_drive.observation import InvalidMessage, VehiclePose, pose_from_odometry, route_from_path
from td3_drive.reward import StepEvents
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, NodeContext
from td3_drive.runtime.messages import seconds


def declare_topics(ctx: NodeContext) -> T.Topics:
    """The ``role_name`` and ``namespace`` parameters every node declares -> its topic names."""
    return T.Topics(ctx.parameter("role_name", "ego_vehicle", "CARLA role name of the ego vehicle"),
                    ctx.parameter("namespace", "", "prefix of the /td3 topics (multi-vehicle scale-out)"))


class BridgeWorld:
    """Latest pose and route, a short pose history and the events by stamp, pending episode start.

    The history lets the trainer score the step into t with the pose and events stamped
    t, even when they arrive after the observation of t (separate topics under ROS 2).
    """

    #: poses kept by stamp (2.5 s at 20 Hz: far more than any reordering we tolerate)
    HISTORY = 50

    def __init__(self, ctx: NodeContext, topics: T.Topics, drops: DropCounter, events: bool = True,
                 on_pose: Callable[[], None] | None = None) -> None:
        self.drops = drops
        self.pose: VehiclePose | None = None
        self.pose_stamp = -np.inf
        self.route: np.ndarray | None = None
        self.route_stamp = -np.inf
        self._poses: deque[tuple[float, VehiclePose]] = deque(maxlen=self.HISTORY)
        self._events: list[tuple[float, str]] = []  # (stamp, "collision" | "lane_invasion")
        self._on_pose = on_pose
        self._episode_start_s: float | None = None
        ctx.create_subscription(T.HEADER, topics.episode_start, self.on_episode_start, LATCHED_QOS)
        ctx.create_subscription(T.PATH, topics.route, self.on_route, LATCHED_QOS)
        ctx.create_subscription(T.ODOMETRY, topics.odometry, self.on_odometry, RELIABLE_QOS)
        if events:
            ctx.create_subscription(T.COLLISION, topics.collision, self.on_collision, RELIABLE_QOS)
            ctx.create_subscription(T.LANE_INVASION, topics.lane_invasion, self.on_lane_invasion, RELIABLE_QOS)

    def on_episode_start(self, msg: Any) -> None:
        self._episode_start_s = seconds(msg.stamp)

    def on_route(self, msg: Any) -> None:
        try:
            self.route = route_from_path(msg)  # an invalid new route keeps the previous one
            self.route_stamp = seconds(msg.header.stamp)
        except InvalidMessage as exc:
            self.drops.drop(exc.reason, str(exc))

    def on_odometry(self, msg: Any) -> None:
        t = seconds(msg.header.stamp)
        if t < self.pose_stamp:  # a late, reordered pose must not replace a newer one
            return self.drops.drop("stale_odometry_stamp", f"{t} < {self.pose_stamp}")
        try:
            self.pose = pose_from_odometry(msg)
            self.pose_stamp = t
        except InvalidMessage as exc:
            return self.drops.drop(exc.reason, str(exc))
        self._poses.append((t, self.pose))
        if self._on_pose is not None:
            self._on_pose()

    def on_collision(self, msg: Any) -> None:
        self._add_event(seconds(msg.header.stamp), "collision")

    def on_lane_invasion(self, msg: Any) -> None:
        self._add_event(seconds(msg.header.stamp), "lane_invasion")

    def _add_event(self, stamp_s: float, kind: str) -> None:
        if len(self._events) >= self.HISTORY * 20:  # only far-future stamps stay queued this long
            self.drops.drop("event_queue_full", f"{kind} at {stamp_s}: oldest queued event discarded")
            self._events.pop(0)
        self._events.append((stamp_s, kind))

    def take_events(self, until: float = np.inf) -> StepEvents:
        """The events stamped at or before ``until`` (all by default), removed from the queue."""
        taken = [kind for t, kind in self._events if t <= until]
        self._events = [(t, kind) for t, kind in self._events if t > until]
        return StepEvents(collision="collision" in taken, lane_invasions=taken.count("lane_invasion"))

    #: s; the bridge stamps a tick's camera and odometry with the same time: this only absorbs rounding
    STAMP_TOLERANCE = 1e-3

    def pose_at(self, stamp_s: float, exact: bool = False) -> VehiclePose | None:
        """The pose stamped ``stamp_s``; unless ``exact``, else the newest one before it (None if none)."""
        for t, pose in reversed(self._poses):
            if abs(t - stamp_s) <= self.STAMP_TOLERANCE:
                return pose
            if t < stamp_s:
                return None if exact else pose
        return None

    def has_pose_for(self, stamp_s: float) -> bool:
        """Whether the pose stamped ``stamp_s`` (or a newer one) has arrived."""
        return self.pose_stamp >= stamp_s - self.STAMP_TOLERANCE

    def pending_start(self, stamp_s: float) -> bool:
        """Whether ``starts_episode(stamp_s)`` would be true, without consuming it."""
        return self._episode_start_s is not None and stamp_s >= self._episode_start_s

    @property
    def route_current(self) -> bool:
        """Whether the route belongs to the announced episode: stamped at or after its start.

        An episode's route is stamped at or before its first tick, and its start is announced
        at that stamp (the embedded simulator: both at the first tick; CARLA: the episode
        manager announces the stamp of the first route planned after the teleport).  Until it
        is here, the held route is the previous episode's.
        """
        return self._episode_start_s is None or self.route_stamp >= self._episode_start_s - self.STAMP_TOLERANCE

    def waiting_for_route(self, stamp_s: float) -> bool:
        """True (and counted ``stale_route``) while an episode is due at ``stamp_s`` without its route."""
        if self.pending_start(stamp_s) and not self.route_current:
            self.drops.drop("stale_route", f"episode due at {self._episode_start_s}, route from {self.route_stamp}")
            return True
        return False

    def starts_episode(self, stamp_s: float) -> bool:
        """True once, for the first tick at or after the announced episode start that has its route."""
        if self.pending_start(stamp_s) and self.route_current:
            self._episode_start_s = None
            return True
        return False

    @property
    def ready(self) -> bool:
        return self.pose is not None and self.route is not None


class CameraPoseJoin:
    """Calls ``on_tick(item, pose)`` once the odometry stamped like the camera image has arrived.

    The CARLA bridge publishes a tick's camera image *before* its odometry: it updates actors
    in creation order, real sensors before pseudo-sensors (carla_ros_bridge
    ``actor_factory.py``, ``update_actor_states``), so "the newest pose" at an image is the
    previous tick's.  The embedded simulator publishes either way (``publish_order``).  One
    image (``item``: the message, or what the node made of it) is held at a time; it is
    dropped (counted ``no_pose_for_image``, or ``no_odometry`` before any) when a newer image
    or a newer pose arrives without its pose.  The owner calls :meth:`poll` on every pose.
    """

    def __init__(self, world: BridgeWorld, on_tick: Callable[[Any, VehiclePose], None],
                 drops: DropCounter) -> None:
        self.world, self.on_tick, self.drops = world, on_tick, drops
        self._held: tuple[float, Any] | None = None

    def on_image(self, stamp_s: float, item: Any) -> None:
        if self._held is not None:
            self.drops.drop("no_odometry" if self.world.pose is None else "no_pose_for_image",
                            f"image {self._held[0]} superseded")
        self._held = (stamp_s, item)
        self.poll()

    def poll(self) -> None:
        if self._held is None:
            return
        t, item = self._held
        pose = self.world.pose_at(t, exact=True)
        if pose is not None:
            self._held = None
            self.on_tick(item, pose)
        elif self.world.pose_stamp > t + BridgeWorld.STAMP_TOLERANCE:  # its tick's pose was skipped
            self._held = None
            self.drops.drop("no_pose_for_image", f"image {t}: odometry went on to {self.world.pose_stamp}")


def observation_from_messages(image_msg: Any, state_msg: Any, frame_stack: int,
                              state_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The observation topics -> (uint8 (k, 84, 84), float32 (state_dim,)); ValueError if malformed."""
    if image_msg.encoding != "mono8" or image_msg.height != 84 or image_msg.width != 84 * frame_stack:
        raise ValueError(f"observation image must be mono8 84x{84 * frame_stack}")
    data = image_msg.data
    pixels = data if isinstance(data, np.ndarray) else np.frombuffer(bytes(data), dtype=np.uint8)
    if pixels.size != 84 * 84 * frame_stack or image_msg.step != 84 * frame_stack:
        raise ValueError("observation image size mismatch")
    obs = np.ascontiguousarray(pixels.reshape(84, frame_stack, 84).transpose(1, 0, 2))
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
