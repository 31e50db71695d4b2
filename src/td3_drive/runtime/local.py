"""In-process lockstep runtime: the embedded default, the tests and the benchmarks.

Publishing enqueues; :meth:`LocalRuntime.spin` delivers messages in FIFO order
until no callback publishes anything more.  With the simulator ticking only
after it receives a control command, one spin is one synchronous CARLA tick:
sim tick -> camera -> preprocessing -> policy -> control -> trainer.  Nothing
depends on threads or wall time, so runs are reproducible bit for bit.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable

from td3_drive.runtime import messages
from td3_drive.runtime.context import ContextBase, Timer
from td3_drive.runtime.interface import RELIABLE_QOS, QoS

CLOCK_TYPE = "rosgraph_msgs/msg/Clock"
Tap = Callable[[str, str, Any, float], None]


class LocalPublisher:
    def __init__(self, runtime: "LocalRuntime", topic: str, type_name: str) -> None:
        self._runtime, self.topic, self.type_name = runtime, topic, type_name

    def publish(self, msg: Any) -> None:
        if msg.__msgtype__ != self.type_name:
            raise TypeError(f"{self.topic} carries {self.type_name}, got {msg.__msgtype__}")
        self._runtime._enqueue(self.topic, self.type_name, msg)


class LocalContext(ContextBase):
    """NodeContext for one node of a LocalRuntime."""

    def __init__(self, runtime: "LocalRuntime", name: str) -> None:
        super().__init__(name, runtime.parameters)
        self._runtime = runtime

    def create_publisher(self, type_name: str, topic: str, qos: QoS = RELIABLE_QOS) -> LocalPublisher:
        type_name = messages.normalize_type_name(type_name)
        self._runtime._bind_type(topic, type_name)
        return LocalPublisher(self._runtime, topic, type_name)

    def create_subscription(
        self, type_name: str, topic: str, callback: Callable[[Any], None], qos: QoS = RELIABLE_QOS
    ) -> None:
        type_name = messages.normalize_type_name(type_name)
        self._runtime._bind_type(topic, type_name)
        self._runtime._subscribers.setdefault(topic, []).append(callback)
        latched = self._runtime._latched.get(topic)
        if latched is not None and qos.transient_local:
            self._runtime._queue.append((topic, latched, [callback]))

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> None:
        self._runtime._timers.append(Timer(period_s, callback, self._runtime.time_s + period_s))

    def now(self) -> float:
        return self._runtime.time_s


class LocalRuntime:
    """A deterministic single-process ROS graph."""

    def __init__(self, parameters: dict[str, dict[str, Any]] | None = None) -> None:
        self.parameters = parameters or {}
        self.time_s = 0.0
        self._types: dict[str, str] = {}
        self._subscribers: dict[str, list[Callable[[Any], None]]] = {}
        self._latched: dict[str, Any] = {}
        self._queue: deque[tuple[str, Any, list | None]] = deque()
        self._timers: list[Timer] = []
        self._taps: list[Tap] = []
        self.published_count: dict[str, int] = {}

    def context(self, name: str) -> LocalContext:
        return LocalContext(self, name)

    def topic_types(self) -> dict[str, str]:
        return dict(self._types)

    def add_tap(self, tap: Tap) -> None:
        """Observe every published message (bag recording, tests)."""
        self._taps.append(tap)

    def _bind_type(self, topic: str, type_name: str) -> None:
        bound = self._types.setdefault(topic, type_name)
        if bound != type_name:
            raise TypeError(f"topic {topic} already carries {bound}, cannot also carry {type_name}")

    def _enqueue(self, topic: str, type_name: str, msg: Any) -> None:
        if type_name == CLOCK_TYPE:
            # use_sim_time: the simulator's /clock is the graph's clock, as with the CARLA bridge
            self.time_s = messages.seconds(msg.clock)
        self._latched[topic] = msg
        self.published_count[topic] = self.published_count.get(topic, 0) + 1
        for tap in self._taps:
            tap(topic, type_name, msg, self.time_s)
        self._queue.append((topic, msg, None))

    def publish(self, topic: str, msg: Any) -> None:
        """Inject a message from outside any node (tests, bag playback)."""
        self._bind_type(topic, msg.__msgtype__)
        self._enqueue(topic, msg.__msgtype__, msg)

    def spin(self, max_messages: int = 1_000_000, until: Callable[[], bool] | None = None) -> int:
        """Deliver queued messages until the graph is quiet (or ``until()`` holds); returns how many.

        A lockstep simulator keeps the graph busy forever, so loops pass ``until``;
        messages still queued then are delivered by the next spin.  Timers fire as
        the clock (the simulator's /clock) passes their deadlines.
        """
        delivered = 0
        self._fire_due_timers()
        while self._queue:
            if until is not None and until():
                break
            if until is None and delivered >= max_messages:
                raise RuntimeError(f"graph did not settle after {max_messages} messages (publish loop?)")
            topic, msg, only = self._queue.popleft()
            for callback in only if only is not None else list(self._subscribers.get(topic, ())):
                callback(msg)
            delivered += 1
            self._fire_due_timers()
        return delivered

    def _fire_due_timers(self) -> None:
        for timer in self._timers:
            timer.fire_due(self.time_s)

    def advance(self, dt_s: float) -> None:
        """Move the clock (when nothing publishes /clock), fire due timers, and spin."""
        self.time_s += dt_s
        self.spin()
