"""The node API: the small subset of rclpy every td3_drive node is written against.

A node is a class whose constructor takes a :class:`NodeContext` and only does
wiring: declare parameters, create publishers/subscriptions/timers, and in each
callback call core code and publish.  ``runtime.local`` implements the context
in-process (lockstep, deterministic); ``runtime.ros`` implements it with rclpy.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from td3_drive import topics as T


@dataclass(frozen=True)
class QoS:
    """What rclpy's QoSProfile needs from us: history depth, reliability, durability."""

    depth: int = 10
    reliable: bool = True
    transient_local: bool = False


#: camera-like streams we consume (rclpy's qos_profile_sensor_data: best effort, keep last 5)
SENSOR_QOS = QoS(depth=5, reliable=False)
#: the bridge's default for everything it publishes, and ours for controls and events
RELIABLE_QOS = QoS(depth=10, reliable=True)
#: last value kept for late joiners: actor weights, the route, episode starts
LATCHED_QOS = QoS(depth=1, reliable=True, transient_local=True)


class Publisher(Protocol):
    def publish(self, msg: Any) -> None: ...


class Logger(Protocol):
    def debug(self, msg: str) -> None: ...
    def info(self, msg: str) -> None: ...
    def warning(self, msg: str) -> None: ...
    def error(self, msg: str) -> None: ...


class NodeContext(Protocol):
    """Everything a node may touch.  Type names are ROS 2 names ('sensor_msgs/msg/Image')."""

    name: str

    def create_publisher(self, type_name: str, topic: str, qos: QoS = RELIABLE_QOS) -> Publisher: ...

    def create_subscription(
        self, type_name: str, topic: str, callback: Callable[[Any], None], qos: QoS = RELIABLE_QOS
    ) -> None: ...

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> None: ...

    def parameter(self, name: str, default: Any, description: str = "") -> Any:
        """Declare a parameter (typed by its default) and return its value."""
        ...

    @property
    def logger(self) -> Logger: ...

    def now(self) -> float:
        """Current (simulation) time in seconds."""
        ...

    def new(self, type_name: str, **fields: Any) -> Any:
        """A message of that type; fields not given get their ROS defaults."""
        ...


def split_seconds(seconds: float) -> tuple[int, int]:
    """Seconds -> (sec, nanosec) of builtin_interfaces/Time, rounded once so 44.9999999999 s is 45 s + 0 ns."""
    sec, nanosec = divmod(int(round(seconds * 1e9)), 1_000_000_000)
    return sec, nanosec


def stamp(ctx: NodeContext, seconds: float) -> Any:
    """builtin_interfaces/Time for ``seconds``, built through the context (works on both runtimes)."""
    sec, nanosec = split_seconds(seconds)
    return ctx.new("builtin_interfaces/msg/Time", sec=sec, nanosec=nanosec)


def yaw_quaternion(ctx: NodeContext, yaw: float) -> Any:
    """geometry_msgs/Quaternion of a rotation by ``yaw`` (rad) about z, built through the context."""
    return ctx.new("geometry_msgs/msg/Quaternion", z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0))


def dataclass_parameters(ctx: NodeContext, cls: type, prefix: str = "", defaults: Any = None) -> Any:
    """Declare one parameter per dataclass field (``prefix.field``, or ``field`` without a prefix) and
    build the dataclass: the one way a node declares its configuration.

    YAML ``prefix: {field: value}`` under ros__parameters is how ROS 2 spells these.  A field's
    ``metadata["description"]`` describes its parameter.  Tuples are declared as lists (ROS
    parameters have no tuples); an optional field (``float | None``) is declared as 0.0, and 0
    reads back as None ("off").
    """
    base = defaults if defaults is not None else cls()
    values = {}
    for f in dataclasses.fields(cls):
        default = getattr(base, f.name)
        optional = "None" in str(f.type)
        if isinstance(default, tuple):
            default = list(default)
        if default is None:
            default = 0.0
        name = f"{prefix}.{f.name}" if prefix else f.name
        value = ctx.parameter(name, default, f.metadata.get("description", f"{cls.__name__}.{f.name}"))
        values[f.name] = None if optional and value == 0 else value
    return cls(**values)


def declare_topics(ctx: NodeContext) -> T.Topics:
    """The ``role_name`` and ``namespace`` parameters every node declares -> its topic names."""
    return T.Topics(ctx.parameter("role_name", "ego_vehicle", "CARLA role name of the ego vehicle"),
                    ctx.parameter("namespace", "", "prefix of the /td3 topics (multi-vehicle scale-out)"))
