"""The world as the bridge's topics describe it, kept by stamp: no ROS, no messages.

``WorldState``: the latest pose and route, a short pose history, the collision and
lane-invasion events by stamp, and the pending episode start.  ``CameraPoseJoin``:
a camera image handed on with the pose of its own tick.  The nodes feed both from
their subscriptions (``nodes.bridge``); the trainer's episode scoring
(``driving.episode``) reads poses and events from a ``WorldState``.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

import numpy as np

from td3_drive.driving.observation import VehiclePose
from td3_drive.driving.reward import StepEvents

#: how a dropped input is reported: drop(reason, detail) (a node's DropCounter.drop)
Drop = Callable[[str, str], None]


class WorldState:
    """Latest pose and route, a short pose history and the events by stamp, pending episode start.

    The history lets the trainer score the step into t with the pose and events stamped
    t, even when they arrive after the observation of t (separate topics under ROS 2).
    """

    #: poses kept by stamp (2.5 s at 20 Hz: far more than any reordering we tolerate)
    HISTORY = 50

    def __init__(self, drop: Drop, on_pose: Callable[[], None] | None = None) -> None:
        self.drop = drop
        self.pose: VehiclePose | None = None
        self.pose_stamp = -np.inf
        self.route: np.ndarray | None = None
        self.route_stamp = -np.inf
        self._poses: deque[tuple[float, VehiclePose]] = deque(maxlen=self.HISTORY)
        self._events: list[tuple[float, str]] = []  # (stamp, "collision" | "lane_invasion")
        self._on_pose = on_pose
        self._episode_start_s: float | None = None

    def start_episode_at(self, stamp_s: float) -> None:
        """An episode start was announced for ``stamp_s`` (/td3/episode_start)."""
        self._episode_start_s = stamp_s

    def set_route(self, route: np.ndarray, stamp_s: float) -> None:
        self.route, self.route_stamp = route, stamp_s

    def add_pose(self, stamp_s: float, pose: VehiclePose) -> None:
        """The pose stamped ``stamp_s``; an older one than the newest is dropped (``stale_odometry_stamp``)."""
        if self.stale(stamp_s):
            return
        self.pose, self.pose_stamp = pose, stamp_s
        self._poses.append((stamp_s, pose))
        if self._on_pose is not None:
            self._on_pose()

    def stale(self, stamp_s: float) -> bool:
        """Whether a pose stamped ``stamp_s`` is older than the newest (then counted ``stale_odometry_stamp``):
        a late, reordered pose must not replace a newer one."""
        if stamp_s < self.pose_stamp:
            self.drop("stale_odometry_stamp", f"{stamp_s} < {self.pose_stamp}")
            return True
        return False

    def add_event(self, stamp_s: float, kind: str) -> None:
        """A ``collision`` or ``lane_invasion`` stamped ``stamp_s``."""
        if len(self._events) >= self.HISTORY * 20:  # only far-future stamps stay queued this long
            self.drop("event_queue_full", f"{kind} at {stamp_s}: oldest queued event discarded")
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
            self.drop("stale_route", f"episode due at {self._episode_start_s}, route from {self.route_stamp}")
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

    def __init__(self, world: WorldState, on_tick: Callable[[Any, VehiclePose], None],
                 drop: Drop) -> None:
        self.world, self.on_tick, self.drop = world, on_tick, drop
        self._held: tuple[float, Any] | None = None

    def on_image(self, stamp_s: float, item: Any) -> None:
        if self._held is not None:
            self.drop("no_odometry" if self.world.pose is None else "no_pose_for_image",
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
        elif self.world.pose_stamp > t + WorldState.STAMP_TOLERANCE:  # its tick's pose was skipped
            self._held = None
            self.drop("no_pose_for_image", f"image {t}: odometry went on to {self.world.pose_stamp}")
