"""The rclpy implementation of :class:`~td3_drive.runtime.interface.NodeContext`.

Nodes are written once against ``NodeContext``; this module runs them on a
real ROS 2 graph.  rclpy is imported lazily inside functions, so the module
(and its conversion logic, which the tests exercise against a fake of the
documented rclpy API) imports on machines without ROS.

Message conventions
-------------------
* Outbound: ``ctx.new(type, **fields)`` returns an rclpy message.  Values are
  converted to what the generated rosidl setters accept: numpy arrays for
  ``sequence<T>`` fields become ``array.array`` (``uint8[]`` included), fixed
  ``T[N]`` arrays stay numpy with the field's dtype, numpy scalars become
  Python scalars (rosidl asserts ``isinstance(v, float)``, which
  ``np.float32`` fails), and nested rosbags messages (what
  ``td3_drive.runtime.messages`` builds) are converted recursively.
  ``publish`` accepts rosbags messages too and converts them the same way.
* Inbound (default ``inbound="rosbags"``): rclpy messages are converted to
  the rosbags classes the in-process runtime delivers (numpy arrays,
  ``__msgtype__``), so node code sees the same objects on both runtimes.
  ``uint8[]`` data is wrapped zero-copy with ``np.frombuffer``.
"""
from __future__ import annotations

import array
import importlib
import json
import signal
import threading
from typing import Any, Callable

import numpy as np

from td3_drive.runtime import messages
from td3_drive.runtime.interface import RELIABLE_QOS, QoS

NodeFactory = Callable[[Any], Any]

# rosidl primitive names (as in ``get_fields_and_field_types()``) -> array.array typecodes
_TYPECODES = {
    "float": "f", "double": "d", "int8": "b", "uint8": "B", "int16": "h", "uint16": "H",
    "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q",
}
# rosidl primitive names -> numpy dtypes for fixed-size arrays (rclpy keeps those as numpy)
_DTYPES = {
    "float": np.float32, "double": np.float64, "int8": np.int8, "uint8": np.uint8,
    "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
    "int64": np.int64, "uint64": np.uint64,
}
_FLOATS = {"float", "double", "float32", "float64", "long double"}
_INTS = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "byte", "char"}
# rosbags base names -> numpy dtypes, for the inbound direction
_ROSBAGS_DTYPES = {
    "bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8, "uint8": np.uint8,
    "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
    "int64": np.int64, "uint64": np.uint64, "float32": np.float32, "float64": np.float64,
}


# --------------------------------------------------------------------------- types
def import_message_class(type_name: str) -> type:
    """'sensor_msgs/msg/Image' (or 'sensor_msgs/Image') -> the rclpy class ``sensor_msgs.msg.Image``."""
    package, sub, name = messages.normalize_type_name(type_name).split("/")
    try:
        module = importlib.import_module(f"{package}.{sub}")
    except ImportError as exc:
        raise ImportError(
            f"message package {package!r} is not installed in this ROS 2 environment "
            f"(needed for {type_name}); for carla_msgs build carla-ros-bridge from source"
        ) from exc
    try:
        return getattr(module, name)
    except AttributeError:
        raise ImportError(f"{package}.{sub} has no message {name!r}") from None


def parse_field_type(field_type: str) -> tuple[str, str, int | None]:
    """Parse a rosidl field type string into (kind, element type, length).

    kind is 'scalar', 'message', 'sequence' (unbounded or bounded) or 'array'
    (fixed size); e.g. 'sequence<uint8>' -> ('sequence', 'uint8', None),
    'double[9]' -> ('array', 'double', 9), 'std_msgs/Header' -> ('message', ...).
    """
    field_type = field_type.strip()
    if field_type.startswith("sequence<") and field_type.endswith(">"):
        inner = field_type[len("sequence<"):-1]
        element, _, bound = inner.partition(",")
        return "sequence", element.strip(), int(bound) if bound.strip() else None
    if field_type.endswith("]") and "[" in field_type:
        element, _, length = field_type[:-1].rpartition("[")
        return "array", element.strip(), int(length) if length.strip() else None
    element = field_type.split("<=")[0]  # bounded strings: 'string<=10'
    return ("message" if "/" in element else "scalar"), element, None


def _message_type_name(element: str) -> str:
    """'std_msgs/Header' (rosidl field notation) -> 'std_msgs/msg/Header'."""
    return messages.normalize_type_name(element)


def _scalar(element: str, value: Any) -> Any:
    # numpy scalars are not int/float/bool instances for rosidl's asserts (np.float32 in particular)
    if element == "boolean":
        return bool(value)
    if element in _FLOATS:
        return float(value)
    if element in _INTS:
        return int(value)
    if element == "octet":
        return bytes([int(value)]) if not isinstance(value, (bytes, bytearray)) else bytes(value)
    if element in ("string", "wstring"):
        return str(value)
    return value


class MessageConverter:
    """Builds rclpy messages from keyword fields, and rclpy messages back into rosbags ones."""

    def __init__(self, resolve: Callable[[str], type] = import_message_class) -> None:
        self._resolve = resolve
        self._classes: dict[str, type] = {}

    def message_class(self, type_name: str) -> type:
        name = messages.normalize_type_name(type_name)
        cls = self._classes.get(name)
        if cls is None:
            cls = self._classes[name] = self._resolve(name)
        return cls

    # ---- outbound: kwargs / rosbags -> rclpy
    def new(self, type_name: str, **fields: Any) -> Any:
        cls = self.message_class(type_name)
        field_types = cls.get_fields_and_field_types()
        unknown = set(fields) - set(field_types)
        if unknown:
            raise TypeError(f"{messages.normalize_type_name(type_name)} has no field(s) {sorted(unknown)}")
        msg = cls()
        for name, value in fields.items():
            setattr(msg, name, self.convert_field(field_types[name], value))
        return msg

    def to_ros(self, msg: Any, type_name: str | None = None) -> Any:
        """A rosbags message (or an rclpy one, returned as is) as an rclpy message."""
        name = type_name or getattr(msg, "__msgtype__", None)
        if name is None:
            return msg  # already an rclpy message
        cls = self.message_class(name)
        if isinstance(msg, cls):
            return msg
        field_types = cls.get_fields_and_field_types()
        return self.new(name, **{f: getattr(msg, f) for f in field_types if hasattr(msg, f)})

    def convert_field(self, field_type: str, value: Any) -> Any:
        kind, element, length = parse_field_type(field_type)
        if kind == "scalar":
            return _scalar(element, value)
        if kind == "message":
            return self._nested(element, value)
        if element in _TYPECODES and kind == "sequence":
            return _to_array(value, element)
        if element in _DTYPES and kind == "array":
            out = np.asarray(value, dtype=_DTYPES[element])
            if length is not None and out.size != length:
                raise ValueError(f"field {field_type} needs {length} values, got {out.size}")
            return out.reshape(-1)
        if "/" in element:
            return [self._nested(element, v) for v in value]
        return [_scalar(element, v) for v in value]

    def _nested(self, element: str, value: Any) -> Any:
        name = _message_type_name(element)
        cls = self.message_class(name)
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            return self.new(name, **value)
        return self.to_ros(value, name)

    # ---- inbound: rclpy -> rosbags (what LocalRuntime delivers)
    def to_rosbags(self, msg: Any, type_name: str) -> Any:
        name = messages.normalize_type_name(type_name)
        _, field_defs = messages.typestore().fielddefs[name]
        values = {f: _from_ros(node, getattr(msg, f), self) for f, node in field_defs}
        return messages.message_class(name)(**values)


def _to_array(value: Any, element: str) -> array.array:
    code = _TYPECODES[element]
    if isinstance(value, array.array) and value.typecode == code:
        return value
    out = array.array(code)
    if isinstance(value, (bytes, bytearray, memoryview)) and code == "B":
        out.frombytes(bytes(value))
    else:
        # one C-level copy instead of rosidl's per-element checks on a list
        out.frombytes(np.ascontiguousarray(value, dtype=_DTYPES[element]).tobytes())
    return out


def _from_ros(node: tuple, value: Any, conv: MessageConverter) -> Any:
    from rosbags.typesys.base import Nodetype

    kind, detail = node
    if kind == Nodetype.BASE:
        if isinstance(value, (bytes, bytearray)) and detail[0] != "string":
            return int.from_bytes(value, "little")  # rclpy 'byte' (octet) fields are 1-byte bytes
        return value
    if kind == Nodetype.NAME:
        return conv.to_rosbags(value, detail)
    element, _ = detail
    if element[0] == Nodetype.BASE and element[1][0] in _ROSBAGS_DTYPES:
        dtype = _ROSBAGS_DTYPES[element[1][0]]
        if isinstance(value, np.ndarray):  # rclpy keeps fixed-size arrays as numpy
            return value.astype(dtype, copy=False)
        if isinstance(value, (array.array, bytes, bytearray)) and dtype is not np.bool_:
            return np.frombuffer(value, dtype=dtype)  # zero copy for camera frames
        if len(value) and isinstance(value[0], (bytes, bytearray)):  # octet lists
            return np.frombuffer(b"".join(value), dtype=dtype)
        return np.asarray(value, dtype=dtype)
    return [_from_ros(element, v, conv) for v in value]


# --------------------------------------------------------------------------- QoS & parameters
def qos_profile(qos: QoS) -> Any:
    """Our QoS preset as an explicit rclpy QoSProfile (KEEP_LAST history, depth, reliability, durability)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=qos.depth,
        reliability=ReliabilityPolicy.RELIABLE if qos.reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if qos.transient_local else DurabilityPolicy.VOLATILE,
    )


def parameter_type(default: Any) -> int | None:
    """rcl_interfaces ParameterType for a default value; None when it cannot be inferred (dynamic typing)."""
    from rcl_interfaces.msg import ParameterType as T

    if isinstance(default, bool):
        return T.PARAMETER_BOOL
    if isinstance(default, int):
        return T.PARAMETER_INTEGER
    if isinstance(default, float):
        return T.PARAMETER_DOUBLE
    if isinstance(default, str):
        return T.PARAMETER_STRING
    if isinstance(default, (list, tuple)) and default:
        first = default[0]
        kinds = [
            (bool, T.PARAMETER_BOOL_ARRAY), (int, T.PARAMETER_INTEGER_ARRAY),
            (float, T.PARAMETER_DOUBLE_ARRAY), (str, T.PARAMETER_STRING_ARRAY),
        ]
        for kind, code in kinds:
            if isinstance(first, kind) and all(type(v) is type(first) for v in default):
                return code
    # None or an empty list: rclpy would infer nothing (or BYTE_ARRAY for []), so declare dynamically
    return None


def coerce_parameter(node_name: str, name: str, default: Any, value: Any) -> Any:
    """The same typing rules as LocalContext.parameter: int -> float allowed, otherwise the default's type."""
    if isinstance(value, array.array):  # rclpy returns array-typed parameters as array.array
        value = list(value)
    if isinstance(default, tuple) and isinstance(value, list):
        value = tuple(value)
    if default is None or value is None or isinstance(value, type(default)):
        if isinstance(default, list) and default and isinstance(default[0], float):
            value = [float(v) for v in value]
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"{node_name}: parameter {name!r} must be {type(default).__name__}, got {value!r}")


# --------------------------------------------------------------------------- the context
class _Logger:
    """rclpy's RcutilsLogger behind our Logger protocol (rclpy wants str; older releases only have warn)."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger

    def debug(self, msg: str) -> None:
        self._logger.debug(str(msg))

    def info(self, msg: str) -> None:
        self._logger.info(str(msg))

    def warning(self, msg: str) -> None:
        (getattr(self._logger, "warning", None) or self._logger.warn)(str(msg))

    def error(self, msg: str) -> None:
        self._logger.error(str(msg))


class _Publisher:
    def __init__(self, publisher: Any, converter: MessageConverter, type_name: str,
                 alive: Callable[[], bool] = lambda: True) -> None:
        self._publisher, self._converter, self.type_name, self._alive = publisher, converter, type_name, alive
        self.dropped_after_shutdown = 0

    def publish(self, msg: Any) -> None:
        ros_msg = self._converter.to_ros(msg, self.type_name if hasattr(msg, "__msgtype__") else None)
        if not self._alive():  # shutting down: a worker thread's late publish is dropped, not an error
            self.dropped_after_shutdown += 1
            return
        try:
            self._publisher.publish(ros_msg)
        except Exception:
            if self._alive():
                raise
            self.dropped_after_shutdown += 1  # the context went away between the check and the call


class RosContext:
    """NodeContext over an ``rclpy.node.Node``.

    Callback groups: every subscription and timer shares one mutually exclusive
    group, so a node's callbacks never run concurrently (its state needs no
    locks, as in the in-process runtime).  With ``parallel_timers`` each timer
    gets its own group: under a MultiThreadedExecutor a long timer callback
    (the trainer's learning step) then never blocks subscriptions; such a
    node must guard state shared between its timers and its subscriptions.
    """

    def __init__(
        self,
        node: Any,
        *,
        inbound: str = "rosbags",
        parallel_timers: bool = False,
        converter: MessageConverter | None = None,
    ) -> None:
        if inbound not in ("rosbags", "rclpy"):
            raise ValueError("inbound must be 'rosbags' or 'rclpy'")
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

        self._node = node
        self.name = node.get_name()
        self._inbound = inbound
        self._parallel_timers = parallel_timers
        self._converter = converter or MessageConverter()
        self._group_factory = MutuallyExclusiveCallbackGroup
        self._subscription_group = MutuallyExclusiveCallbackGroup()
        self._logger = _Logger(node.get_logger())
        self._keep: list[Any] = []  # rclpy destroys entities whose handles are garbage collected
        self._inbound_failed: set[str] = set()
        self._lock = threading.Lock()

    @property
    def node(self) -> Any:
        """The underlying rclpy node (for code that needs more than the NodeContext subset)."""
        return self._node

    def create_publisher(self, type_name: str, topic: str, qos: QoS = RELIABLE_QOS) -> _Publisher:
        type_name = messages.normalize_type_name(type_name)
        cls = self._converter.message_class(type_name)
        publisher = self._node.create_publisher(cls, topic, qos_profile(qos))
        self._keep.append(publisher)
        return _Publisher(publisher, self._converter, type_name, self._context_ok)

    def _context_ok(self) -> bool:
        context = getattr(self._node, "context", None)
        return context is None or bool(context.ok())

    def create_subscription(
        self, type_name: str, topic: str, callback: Callable[[Any], None], qos: QoS = RELIABLE_QOS
    ) -> None:
        type_name = messages.normalize_type_name(type_name)
        cls = self._converter.message_class(type_name)
        handler = callback if self._inbound == "rclpy" else self._rosbags_handler(type_name, topic, callback)
        subscription = self._node.create_subscription(
            cls, topic, handler, qos_profile(qos), callback_group=self._subscription_group
        )
        self._keep.append(subscription)

    def _rosbags_handler(self, type_name: str, topic: str, callback: Callable[[Any], None]) -> Callable[[Any], None]:
        def handler(msg: Any) -> None:
            try:
                converted = self._converter.to_rosbags(msg, type_name)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                # definitions differ from the installed package (e.g. another carla_msgs release):
                # deliver the rclpy message rather than nothing, and say so once
                with self._lock:
                    first = topic not in self._inbound_failed
                    self._inbound_failed.add(topic)
                if first:
                    self._logger.warning(
                        f"{topic}: cannot convert {type_name} to the embedded definition ({exc}); "
                        "delivering rclpy messages on this topic"
                    )
                converted = msg
            callback(converted)

        return handler

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> None:
        if period_s <= 0:
            raise ValueError("timer period must be positive")
        timer = self._node.create_timer(float(period_s), callback, callback_group=self._timer_group())
        self._keep.append(timer)

    def _timer_group(self) -> Any:
        """The subscriptions' group (serial), or a group of the timer's own with ``parallel_timers``."""
        return self._group_factory() if self._parallel_timers else self._subscription_group

    def create_wall_timer(self, period_s: float, callback: Callable[[], None]) -> None:
        """A timer on the steady clock: it fires even when /clock stalls.

        Grouped like ``create_timer``: serial with the subscriptions unless ``parallel_timers``
        (a simulator stepping from its deadline timer while its control callback steps too
        crashed on a real Humble).  Not part of NodeContext (the in-process runtime has no
        wall time); watchdogs use it where present and fall back to ``create_timer``.
        """
        from rclpy.clock import Clock, ClockType

        if period_s <= 0:
            raise ValueError("timer period must be positive")
        timer = self._node.create_timer(
            float(period_s), callback, callback_group=self._timer_group(), clock=Clock(clock_type=ClockType.STEADY_TIME)
        )
        self._keep.append(timer)

    def parameter(self, name: str, default: Any, description: str = "") -> Any:
        from rcl_interfaces.msg import ParameterDescriptor

        ptype = parameter_type(default)
        # read once at start: read-only, so ``ros2 param set`` says it is refused instead of
        # reporting a success that changes nothing
        descriptor = ParameterDescriptor(description=description, dynamic_typing=ptype is None, read_only=True)
        if ptype is not None:
            descriptor.type = ptype
        try:
            self._node.declare_parameter(name, default, descriptor)
        except Exception as exc:  # rclpy.exceptions.InvalidParameterTypeException (a YAML 1 for a 1.0)
            floats = isinstance(default, float) or (
                isinstance(default, (list, tuple)) and bool(default) and isinstance(default[0], float)
            )
            if type(exc).__name__ != "InvalidParameterTypeException" or not floats:
                raise
            # accept integers for float parameters (YAML 1 for 1.0), as the in-process runtime does
            descriptor = ParameterDescriptor(description=description, dynamic_typing=True, read_only=True)
            self._node.declare_parameter(name, default, descriptor)
        value = self._node.get_parameter(name).value
        return coerce_parameter(self.name, name, default, value)

    @property
    def logger(self) -> _Logger:
        return self._logger

    def now(self) -> float:
        """Node clock in seconds: simulation time from /clock when use_sim_time is true."""
        return self._node.get_clock().now().nanoseconds * 1e-9

    def new(self, type_name: str, **fields: Any) -> Any:
        return self._converter.new(type_name, **fields)


# --------------------------------------------------------------------------- process entry points
def _init_rclpy(rclpy: Any, args: list[str] | None) -> None:
    """rclpy.init without rclpy's own signal handlers: they invalidate the context under a running
    executor (``RCLError: failed to initialize wait set``) and chain to KeyboardInterrupt, which a
    second Ctrl-C then raises inside the cleanup.  Ours only ask the spin loop to stop."""
    try:
        from rclpy.signals import SignalHandlerOptions
    except ImportError:  # an rclpy without the option: its handlers, replaced by ours below
        rclpy.init(args=args)
        return
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)


def _stop_on_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGINT and SIGTERM set ``stop`` (main thread only: Python delivers signals there); the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    return previous


def _exit_report(node: Any) -> str:
    status = getattr(node, "status", lambda: {})()
    drops = dict(getattr(getattr(node, "drops", None), "counts", {}) or {})
    return f"exit report: {json.dumps({'status': status, 'drops': drops}, default=str, sort_keys=True)}"


def run_node(
    node_name: str,
    factory: NodeFactory,
    *,
    args: list[str] | None = None,
    parallel_timers: bool = False,
    num_threads: int | None = None,
    started: Callable[[Any, RosContext], None] | None = None,
    until: Callable[[Any], bool] | None = None,
) -> int:
    """rclpy.init, one Node + RosContext + td3_drive node, spin on a MultiThreadedExecutor, clean shutdown.

    The node name is the default; a launch file's ``name=`` (a ``__node:=``
    remap) takes precedence, and ``ctx.name`` reports the effective name.
    ``started(node, ctx)`` runs once the node is built and added to the executor; the node
    stops by itself once ``until(node)`` is true (checked every spin, at least every 0.1 s).

    SIGINT / SIGTERM (Ctrl-C, ``ros2 launch`` stopping) end the spin loop, and every later
    one is ignored, so the shutdown runs to its end: the executor first (its thread pool
    drained, so no callback still runs or waits to), then the node's
    ``close()`` (the trainer's final checkpoint, exactly once), then the rclpy node and
    context.  The node's counters are logged as its exit report, and the exit code is 0.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.node import Node

    stop = threading.Event()
    _init_rclpy(rclpy, args)
    previous = _stop_on_signals(stop)
    ros_node = None
    td3_node = None
    executor = None
    try:
        ros_node = Node(node_name)
        ctx = RosContext(ros_node, parallel_timers=parallel_timers)
        td3_node = factory(ctx)
        executor = MultiThreadedExecutor(num_threads=num_threads)
        executor.add_node(ros_node)
        if started is not None:
            started(td3_node, ctx)
        # spin_once with a timeout, not spin(): the loop sees ``stop`` within 0.1 s of a signal
        while not stop.is_set() and rclpy.ok() and not (until is not None and until(td3_node)):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # not the main thread (no handlers of ours), or the context was shut down elsewhere
    finally:
        stop.set()
        if executor is not None:
            # first: no callback may still run while the node closes.  MultiThreadedExecutor.shutdown
            # waits at most for callbacks already executing (humble executors.py: its work tracker;
            # jazzy's tests _is_shutdown after setting it and never waits); one handed to its thread
            # pool but not started would run beside close() and trigger the executor's destroyed
            # guard condition ("exception was never retrieved: cannot use Destroyable", seen on a
            # real Humble).  Draining the pool first waits for every one of them.
            pool = getattr(executor, "_executor", None)
            if pool is not None:
                pool.shutdown(wait=True)
            executor.shutdown()
        if td3_node is not None:
            try:
                td3_node.close()
                if ros_node is not None:
                    ros_node.get_logger().info(_exit_report(td3_node))
            except Exception as exc:  # never let cleanup hide the shutdown
                if ros_node is not None:
                    ros_node.get_logger().error(f"close() failed: {exc!r}")
        if ros_node is not None:
            ros_node.destroy_node()
        rclpy.try_shutdown()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
