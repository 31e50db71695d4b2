"""carla_world_ready: exits once the bridge has announced the town it loaded.

carla_ros_bridge reloads the town on every start and publishes ``/carla/world_info``
(latched) once it is loaded.  ``train.launch.py`` / ``drive.launch.py`` start every
vehicle's spawn, waypoint publisher and nodes when this process exits: a waypoint
publisher started beside the bridge would plan on the previous world (its own wait for
world_info is 15 s, a cold town load can take longer) and the route never arrives.
CARLA 0.9.16 names maps ``Carla/Maps/Town01``, older releases ``Town01``: the last
path component is compared with ``town``.
"""
from __future__ import annotations

import time
from typing import Any

from td3_drive import topics as T
from td3_drive.runtime.interface import LATCHED_QOS, NodeContext
from td3_drive.runtime.node import Node
from td3_drive.runtime.ros import run_node

NODE_NAME = "carla_world_ready"
#: wall seconds between "still waiting" lines
REPORT_EVERY_S = 10.0


def map_matches(map_name: str, town: str) -> bool:
    """'Carla/Maps/Town01' (0.9.16) and 'Town01' (older) both match town 'Town01'; an empty town matches any."""
    return not town or map_name.rstrip("/").rsplit("/", 1)[-1] == town


class WorldReadyNode(Node):
    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.town = str(ctx.parameter("town", "", "town the bridge loads (empty: any world_info)"))
        self.ready = False
        self.seen: list[str] = []  # map names announced so far
        self._since = time.monotonic()
        self._reported = self._since
        ctx.create_subscription(T.WORLD_INFO, self.topics.world_info, self.on_world_info, LATCHED_QOS)
        wall_timer = getattr(ctx, "create_wall_timer", None)
        if wall_timer is not None:  # the world has no clock yet: report on wall time
            wall_timer(1.0, self.report)

    def on_world_info(self, msg: Any) -> None:
        self.seen.append(str(msg.map_name))
        if map_matches(msg.map_name, self.town):
            self.ready = True
            self.ctx.logger.info(f"{self.ctx.name}: CARLA world {msg.map_name!r} is loaded: starting the vehicles")

    def report(self) -> None:
        now = time.monotonic()
        if self.ready or now - self._reported < REPORT_EVERY_S:
            return
        self._reported = now
        seen = f"seen {self.seen[-1]!r}" if self.seen else f"nothing on {self.topics.world_info}"
        self.ctx.logger.warning(f"{self.ctx.name}: waiting {now - self._since:.0f} s for town {self.town!r} "
                                f"({seen}): is carla_ros_bridge up and CARLA reachable?")

    def status(self) -> dict[str, Any]:
        return {"ready": self.ready, "seen": list(self.seen)}


def main(args: list[str] | None = None) -> int:
    """``ros2 run td3_drive carla_world_ready --ros-args -p town:=Town01``: returns once it is loaded."""
    return run_node(NODE_NAME, WorldReadyNode, args=args, until=lambda node: node.ready)
