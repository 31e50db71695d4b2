"""A fake of the rclpy API the adapter uses, as strict as rclpy where we depend on it.

Checked against the humble sources (ros2/rclpy, ros2/rosidl_python):
* messages: rosidl_generator_py's setters (``resource/_msg.py.em``) assert types --
  Python ``float``/``int``/``bool``, a 1-byte ``bytes`` for ``byte`` (octet) fields,
  the float32 range, ``array.array`` typecodes for numeric sequences;
* parameters: ``Node.declare_parameters`` types a parameter from its default with
  ``Parameter.Type.from_parameter_value`` (arrays by their *elements*: ``[1, 2]`` is an
  INTEGER_ARRAY) and ``_apply_descriptor`` refuses an override of another type with
  ``InvalidParameterTypeException`` (``rclpy/node.py``, ``rclpy/parameter.py``);
* execution: a :class:`FakeGraph` carries messages between fake nodes (KEEP_LAST queues
  per subscription, transient-local history for late joiners, DDS request/offered QoS
  matching, ``/clock`` as every node's time), and ``MultiThreadedExecutor.spin`` runs
  subscriptions and timers on a thread pool, never two callbacks of one mutually
  exclusive group at once, re-raising a callback's exception from ``spin`` as rclpy does.
"""
from __future__ import annotations

import array
import itertools
import math
import os
import sys
import threading
import time
import types
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from td3_drive.runtime import messages

_ROSIDL_NAMES = {"bool": "boolean", "byte": "octet", "char": "uint8", "float32": "float", "float64": "double"}
_INT_RANGES = {
    "int8": (-(2**7), 2**7), "uint8": (0, 2**8), "int16": (-(2**15), 2**15), "uint16": (0, 2**16),
    "int32": (-(2**31), 2**31), "uint32": (0, 2**32), "int64": (-(2**63), 2**63), "uint64": (0, 2**64),
}
_TYPECODE = {"float": "f", "double": "d", "int8": "b", "uint8": "B", "int16": "h", "uint16": "H",
             "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q"}
_FLOAT_BOUNDS = {"float": 3.402823466e+38, "double": 1.7976931348623157e+308}
_NP = {"float": np.float32, "double": np.float64, "int8": np.int8, "uint8": np.uint8, "int16": np.int16,
       "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32, "int64": np.int64, "uint64": np.uint64}


def _rosidl_type(node: tuple) -> str:
    from rosbags.typesys.base import Nodetype

    kind, detail = node
    if kind == Nodetype.BASE:
        return _ROSIDL_NAMES.get(detail[0], detail[0])
    if kind == Nodetype.NAME:
        pkg, _, name = detail.split("/")
        return f"{pkg}/{name}"
    element, length = detail
    inner = _rosidl_type(element)
    return f"{inner}[{length}]" if kind == Nodetype.ARRAY else f"sequence<{inner}>"


class FakeRosidl:
    """Message classes shaped like rosidl_generator_py output, built from the rosbags definitions."""

    def __init__(self) -> None:
        self.classes: dict[str, type] = {}

    def cls(self, type_name: str) -> type:
        name = messages.normalize_type_name(type_name)
        if name not in self.classes:
            _, field_defs = messages.typestore().fielddefs[name]
            fields = {f: _rosidl_type(node) for f, node in field_defs}
            self.classes[name] = self._make(name, fields)
        return self.classes[name]

    def _make(self, name: str, fields: dict[str, str]) -> type:
        fake = self

        def __init__(self, **kwargs):
            for f, t in fields.items():
                object.__setattr__(self, "_" + f, fake.default(t))
            for k, v in kwargs.items():
                setattr(self, k, v)

        body: dict[str, Any] = {"__init__": __init__, "_fields_and_field_types": dict(fields), "__slots__": ()}
        body["get_fields_and_field_types"] = classmethod(lambda cls: dict(cls._fields_and_field_types))
        for f, t in fields.items():
            body[f] = property(
                (lambda f: lambda self: object.__getattribute__(self, "_" + f))(f),
                (lambda f, t: lambda self, v: object.__setattr__(self, "_" + f, fake.check(t, v)))(f, t),
            )
        cls = type(name.split("/")[-1], (), {k: v for k, v in body.items() if k != "__slots__"})
        cls.__module__ = name.split("/")[0] + ".msg"
        return cls

    def default(self, t: str) -> Any:
        if t.startswith("sequence<"):
            inner = t[9:-1]
            return array.array(_TYPECODE[inner]) if inner in _TYPECODE else []
        if t.endswith("]"):
            inner, n = t[:-1].split("[")
            return np.zeros(int(n), _NP[inner]) if inner in _NP else [self.default(inner) for _ in range(int(n))]
        if "/" in t:
            pkg, name = t.split("/")
            return self.cls(f"{pkg}/msg/{name}")()
        return {"boolean": False, "string": "", "float": 0.0, "double": 0.0, "octet": b"\x00"}.get(t, 0)

    def check(self, t: str, v: Any) -> Any:
        """The asserts rosidl's generated setters make (they raise AssertionError)."""
        if t.startswith("sequence<"):
            inner = t[9:-1]
            if inner in _TYPECODE:
                if isinstance(v, array.array):
                    assert v.typecode == _TYPECODE[inner], f"typecode {v.typecode} for {t}"
                    return v
                assert not isinstance(v, np.ndarray), f"{t}: rosidl rejects numpy arrays for sequences"
                return array.array(_TYPECODE[inner], [self.check(inner, x) for x in v])
            assert isinstance(v, list), f"{t} expects a list"
            return [self.check(inner, x) for x in v]
        if t.endswith("]"):
            inner, n = t[:-1].split("[")
            if inner in _NP:
                if isinstance(v, np.ndarray):
                    assert v.dtype == _NP[inner] and v.size == int(n), f"{t}: dtype/size"
                    return v
                assert len(v) == int(n)
                return np.array(v, dtype=_NP[inner])
            assert len(v) == int(n)
            return [self.check(inner, x) for x in v]
        if "/" in t:
            pkg, name = t.split("/")
            assert isinstance(v, self.cls(f"{pkg}/msg/{name}")), f"{t} expects its message class, got {type(v)}"
            return v
        if t == "boolean":
            assert isinstance(v, bool), f"{t}: {v!r}"
        elif t == "octet":
            assert isinstance(v, (bytes, bytearray)) and len(v) == 1, f"octet needs a 1-byte bytes, got {v!r}"
        elif t in ("float", "double"):
            assert isinstance(v, float), f"{t} needs a Python float, got {type(v).__name__}"
            bound = _FLOAT_BOUNDS[t]
            assert not (v < -bound or v > bound) or math.isinf(v), f"{t} out of range: {v!r}"
        elif t in _INT_RANGES:
            assert isinstance(v, int) and not isinstance(v, bool), f"{t}: {v!r}"
            lo, hi = _INT_RANGES[t]
            assert lo <= v < hi
        elif t == "string":
            assert isinstance(v, str)
        return v



# --------------------------------------------------------------------------- parameters
class InvalidParameterTypeException(Exception):
    """rclpy.exceptions.InvalidParameterTypeException: an override of another type than the declared one."""

    def __init__(self, name: str, value: Any, expected: str) -> None:
        super().__init__(f"Trying to set parameter '{name}' to '{value}' of type "
                         f"'{PARAMETER_TYPE_NAMES[parameter_type_of(value)]}', expecting type '{expected}'")


class ExternalShutdownException(Exception):
    pass


PARAMETER_TYPE_NAMES = ["NOT_SET", "BOOL", "INTEGER", "DOUBLE", "STRING", "BYTE_ARRAY", "BOOL_ARRAY",
                        "INTEGER_ARRAY", "DOUBLE_ARRAY", "STRING_ARRAY"]


def parameter_type_of(value: Any) -> int:
    """rclpy's ``Parameter.Type.from_parameter_value`` (humble): arrays typed by their elements."""
    if value is None:
        return 0
    for code, kind in ((1, bool), (2, int), (3, float), (4, str)):
        if isinstance(value, kind):
            return code
    if isinstance(value, (list, tuple, array.array)):
        for code, kind in ((5, bytes), (6, bool), (7, int), (8, float), (9, str)):
            if all(isinstance(v, kind) for v in value):  # [] is a BYTE_ARRAY, as in rclpy
                return code
    raise TypeError(f"The given value is not one of the allowed types '{value!r}'.")


class _Enum:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


# --------------------------------------------------------------------------- middleware
def compatible(offered: Any, requested: Any) -> bool:
    """DDS request/offered matching: reliability and durability offered at least those requested.

    Takes anything with ``reliable`` and ``transient_local`` (our QoS presets, :func:`_qos_of`)."""
    return (offered.reliable or not requested.reliable) and (offered.transient_local or not requested.transient_local)


def _qos_of(profile: Any) -> types.SimpleNamespace:
    return types.SimpleNamespace(reliable=profile.reliability == "RELIABLE", depth=profile.depth,
                                 transient_local=profile.durability == "TRANSIENT_LOCAL")


class FakeGraph:
    """The topics between fake nodes, as DDS delivers them.

    Every subscription has a KEEP_LAST queue of its depth (a full queue loses its oldest
    sample, counted per topic in ``lost``); a transient-local publisher keeps its last ``depth``
    samples for transient-local subscriptions created later; a pair whose QoS does not
    match never connects.  A sample published on ``/clock`` sets every node's time
    (``use_sim_time``).  Samples are numbered, and executors take the oldest ready first.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.publishers: dict[str, list] = {}
        self.subscriptions: dict[str, list] = {}
        self.nodes: list = []
        self.lost: dict[str, int] = {}  # samples overwritten before they were taken, per topic
        self._seq = itertools.count()

    def add_publisher(self, pub: Any) -> None:
        with self.cond:
            pub.history = deque(maxlen=pub.qos.depth) if _qos_of(pub.qos).transient_local else None
            self.publishers.setdefault(pub.topic, []).append(pub)

    def add_subscription(self, sub: Any) -> None:
        with self.cond:
            sub.queue = deque()
            self.subscriptions.setdefault(sub.topic, []).append(sub)
            for pub in self.publishers.get(sub.topic, []):
                if pub.history is not None and _qos_of(sub.qos).transient_local and compatible(
                        _qos_of(pub.qos), _qos_of(sub.qos)):
                    for msg in pub.history:
                        self._enqueue(sub, msg)
            self.cond.notify_all()

    def publish(self, pub: Any, msg: Any) -> None:
        with self.cond:
            if pub.history is not None:
                pub.history.append(msg)
            for sub in self.subscriptions.get(pub.topic, []):
                if compatible(_qos_of(pub.qos), _qos_of(sub.qos)):
                    self._enqueue(sub, msg)
            if pub.topic == "/clock":
                ns = msg.clock.sec * 1_000_000_000 + msg.clock.nanosec
                for node in self.nodes:
                    node.ns = ns
            self.cond.notify_all()

    def _enqueue(self, sub: Any, msg: Any) -> None:
        if len(sub.queue) >= sub.qos.depth:  # KEEP_LAST: the reader's history overwrites its oldest sample
            sub.queue.popleft()
            self.lost[sub.topic] = self.lost.get(sub.topic, 0) + 1
        sub.queue.append((next(self._seq), msg))

    def pending(self) -> int:
        with self.cond:
            return sum(len(s.queue) for subs in self.subscriptions.values() for s in subs)


# --------------------------------------------------------------------------- rclpy
def install_fake_rclpy(monkeypatch, overrides: dict | None = None, spin_raises: BaseException | None = None,
                       timer_scale: float = 1.0):
    """Insert fake rclpy / rcl_interfaces modules; returns a namespace recording what happened.

    ``overrides``: parameter overrides of every node (``Node(name, parameter_overrides={...})``
    adds a node's own, a fake-only dict for rclpy's list of Parameters).  ``timer_scale``
    shortens every timer period (timers run on wall time here).  ``rec.graph`` carries the
    messages; ``rec.calls`` lists each executed callback as (node, what, start, end).
    """
    rec = types.SimpleNamespace(nodes=[], executors=[], shutdowns=0, inits=0, graph=FakeGraph(), calls=[],
                                events=[], signal_handler_options=None)
    graph = rec.graph
    # the default context: valid from init (or from the start, for tests that build nodes directly)
    context = types.SimpleNamespace(valid=True)
    context.ok = lambda: context.valid

    def context_ok():
        return context.valid

    rec.context = context

    class QoSProfile:
        def __init__(self, **kw):
            assert "history" in kw and "depth" in kw
            self.__dict__.update(kw)

    qos = types.ModuleType("rclpy.qos")
    qos.QoSProfile = QoSProfile
    qos.HistoryPolicy = _Enum(KEEP_LAST="KEEP_LAST", KEEP_ALL="KEEP_ALL")
    qos.ReliabilityPolicy = _Enum(RELIABLE="RELIABLE", BEST_EFFORT="BEST_EFFORT")
    qos.DurabilityPolicy = _Enum(VOLATILE="VOLATILE", TRANSIENT_LOCAL="TRANSIENT_LOCAL")

    groups = types.ModuleType("rclpy.callback_groups")

    class MutuallyExclusiveCallbackGroup:
        pass

    groups.MutuallyExclusiveCallbackGroup = MutuallyExclusiveCallbackGroup

    clock_mod = types.ModuleType("rclpy.clock")

    class Clock:
        def __init__(self, *, clock_type="ROS_TIME"):
            self.clock_type = clock_type

    clock_mod.Clock = Clock
    clock_mod.ClockType = _Enum(ROS_TIME="ROS_TIME", STEADY_TIME="STEADY_TIME", SYSTEM_TIME="SYSTEM_TIME")

    class ParameterDescriptor:
        def __init__(self, description="", type=0, dynamic_typing=False, read_only=False):
            self.description, self.type, self.dynamic_typing = description, type, dynamic_typing
            self.read_only = read_only

    class SetParametersResult:
        def __init__(self, successful=False, reason=""):
            self.successful, self.reason = successful, reason

    rcl_msg = types.ModuleType("rcl_interfaces.msg")
    rcl_msg.ParameterDescriptor = ParameterDescriptor
    rcl_msg.SetParametersResult = SetParametersResult
    rcl_msg.ParameterType = _Enum(**{f"PARAMETER_{name}": code for code, name in enumerate(PARAMETER_TYPE_NAMES)})
    exceptions = types.ModuleType("rclpy.exceptions")
    exceptions.InvalidParameterTypeException = InvalidParameterTypeException

    class Node:
        def __init__(self, node_name, *, parameter_overrides: dict | None = None):
            self.name = node_name
            self.publishers, self.subscriptions, self.timers = [], [], []
            self.params: dict[str, Any] = {}
            self.descriptors: dict[str, Any] = {}
            self.overrides = {**(overrides or {}), **(parameter_overrides or {})}
            self.default_group = MutuallyExclusiveCallbackGroup()  # rclpy: a node's default group
            self.destroyed = False
            self.context = context
            self.ns = 1_500_000_000
            self.log = []
            rec.nodes.append(self)
            graph.nodes.append(self)

        def get_name(self):
            return self.name

        def get_logger(self):
            node = self

            class L:
                def debug(self, m): node.log.append(("debug", m))
                def info(self, m): node.log.append(("info", m))
                def warning(self, m): node.log.append(("warning", m))
                def error(self, m): node.log.append(("error", m))

            return L()

        def create_publisher(self, msg_type, topic, qos_profile):
            pub = types.SimpleNamespace(msg_type=msg_type, topic=topic, qos=qos_profile, sent=[])

            def publish(msg):
                assert isinstance(msg, msg_type), f"{topic}: wrong class {type(msg)}"
                if not context.ok():  # rclpy raises RCLError after rclpy.shutdown
                    raise RuntimeError("Failed to publish: publisher's context is invalid")
                pub.sent.append(msg)
                graph.publish(pub, msg)

            pub.publish = publish
            graph.add_publisher(pub)
            self.publishers.append(pub)
            return pub

        def create_subscription(self, msg_type, topic, callback, qos_profile, *, callback_group=None):
            sub = types.SimpleNamespace(msg_type=msg_type, topic=topic, callback=callback, qos=qos_profile,
                                        group=callback_group or self.default_group, node=self)
            self.subscriptions.append(sub)
            graph.add_subscription(sub)
            return sub

        def create_timer(self, period, callback, callback_group=None, clock=None):
            timer = types.SimpleNamespace(period=period, callback=callback, group=callback_group or self.default_group,
                                          clock=clock, node=self, due=time.monotonic() + period * timer_scale)
            self.timers.append(timer)
            return timer

        def declare_parameter(self, name, value=None, descriptor=None, ignore_override=False):
            # rclpy/node.py declare_parameters + _apply_descriptor (humble)
            descriptor = descriptor or ParameterDescriptor()
            assert name not in self.params, f"{name} declared twice"
            if not descriptor.dynamic_typing and value is not None:
                descriptor.type = parameter_type_of(value)  # from the default, whatever the descriptor said
            if not ignore_override and name in self.overrides:
                value = self.overrides[name]
            given = parameter_type_of(value)
            if not descriptor.dynamic_typing and given != 0 and given != descriptor.type:
                raise InvalidParameterTypeException(name, value, PARAMETER_TYPE_NAMES[descriptor.type])
            self.params[name], self.descriptors[name] = value, descriptor

        def get_parameter(self, name):
            return types.SimpleNamespace(value=self.params[name])

        def set_parameters(self, parameters):
            """rclpy ``Node.set_parameters`` (what ``ros2 param set`` reaches): one result per parameter;
            a read-only one is refused (humble ``_set_parameters_atomically``)."""
            results = []
            for p in parameters:
                descriptor = self.descriptors.get(p.name)
                if descriptor is None:
                    results.append(SetParametersResult(False, f"parameter {p.name} is not declared"))
                elif descriptor.read_only:
                    results.append(SetParametersResult(False, f"Trying to set a read-only parameter: {p.name}."))
                else:
                    self.params[p.name] = p.value
                    results.append(SetParametersResult(True))
            return results

        def count_subscribers(self, topic):
            with graph.cond:
                return len(graph.subscriptions.get(topic, []))

        def count_publishers(self, topic):
            with graph.cond:
                return len(graph.publishers.get(topic, []))

        def get_clock(self):
            return types.SimpleNamespace(now=lambda: types.SimpleNamespace(nanoseconds=self.ns))

        def destroy_node(self):
            self.destroyed = True
            rec.events.append(("destroy_node", self.name))

    node_mod = types.ModuleType("rclpy.node")
    node_mod.Node = Node

    class MultiThreadedExecutor:
        """Runs the nodes' ready callbacks on ``num_threads`` threads until :meth:`shutdown`."""

        def __init__(self, num_threads=None, *, context=None):
            self.num_threads = num_threads or os.cpu_count() or 2  # rclpy: multiprocessing.cpu_count(), else 2
            self.nodes, self.shut = [], False
            self._busy: set[int] = set()  # ids of the callback groups running a callback now
            self._error: BaseException | None = None
            # rclpy's name: humble's MultiThreadedExecutor.shutdown never shuts this pool down
            self._executor: ThreadPoolExecutor | None = None
            self._running: set[int] = set()  # callbacks executing now (humble: the work tracker)
            self._started = 0
            rec.executors.append(self)

        def add_node(self, node):
            self.nodes.append(node)

        def spin(self):
            while not self.shut and self._error is None:
                self.spin_once(timeout_sec=None)
            self._raise()

        def spin_once(self, timeout_sec=None):
            """Start the ready callbacks, or wait for one up to ``timeout_sec`` (rclpy: one callback per call)."""
            if spin_raises is not None:
                raise spin_raises
            if not context.ok():  # rclpy's wait set on a shut-down context
                raise RuntimeError("failed to initialize wait set: the given context is not valid")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.num_threads, thread_name_prefix="fake-executor")
            with graph.cond:
                if self.shut:
                    return
                work = self._take_ready()
                if not work:
                    wait = self._until_next_timer()
                    graph.cond.wait(timeout=wait if timeout_sec is None else min(wait, timeout_sec))
                    work = [] if self.shut else self._take_ready()
            for item in work:
                self._executor.submit(self._run, *item)
            self._raise()

        def _raise(self):
            if self._error is not None:
                error, self._error = self._error, None
                raise error  # rclpy re-raises a callback's exception from spin / spin_once

        def _take_ready(self) -> list:
            """Under graph.cond: the callbacks to start now, oldest sample first, one per free group."""
            now = time.monotonic()
            candidates = []
            for node in self.nodes:
                candidates += [(sub.queue[0][0], sub) for sub in node.subscriptions if sub.queue]
                candidates += [(-1, timer) for timer in node.timers if timer.due <= now]
            work = []
            for _, entity in sorted(candidates, key=lambda c: c[0]):
                if id(entity.group) in self._busy:
                    continue
                self._busy.add(id(entity.group))
                if hasattr(entity, "queue"):
                    work.append((entity, entity.callback, (entity.queue.popleft()[1],), entity.topic))
                else:
                    entity.due = max(entity.due + entity.period * timer_scale, now)
                    work.append((entity, entity.callback, (), f"timer {entity.period}s"))
            return work

        def _until_next_timer(self) -> float:
            # a due timer whose group is busy waits for that callback's end, which notifies
            dues = [t.due for node in self.nodes for t in node.timers if id(t.group) not in self._busy]
            return max(0.0, min(dues) - time.monotonic()) if dues else 0.1

        def _run(self, entity, callback: Callable, args: tuple, what: str) -> None:
            start = time.monotonic()
            with graph.cond:
                self._started += 1
                token = self._started
                self._running.add(token)
            rec.events.append(("callback_start", entity.node.name, what))
            try:
                callback(*args)
            except BaseException as exc:  # noqa: BLE001 -- reported by spin, as rclpy does
                self._error = self._error or exc
            finally:
                with graph.cond:
                    self._running.discard(token)
                    self._busy.discard(id(entity.group))
                    rec.calls.append((entity.node.name, what, start, time.monotonic()))
                    graph.cond.notify_all()

        def idle(self) -> bool:
            """No callback running and no sample waiting."""
            with graph.cond:
                return not self._busy and graph.pending() == 0

        def shutdown(self, timeout_sec=None):
            """Stop taking work and wait for the callbacks executing now, as rclpy humble's
            ``Executor.shutdown`` (its work tracker): a callback already handed to the thread pool
            but not started yet still runs afterwards."""
            with graph.cond:
                self.shut = True
                running = set(self._running)
                graph.cond.notify_all()
                while running & self._running:
                    graph.cond.wait(0.05)
            rec.events.append(("executor_shutdown",))

    executors = types.ModuleType("rclpy.executors")
    executors.MultiThreadedExecutor = MultiThreadedExecutor
    executors.ExternalShutdownException = ExternalShutdownException

    rclpy = types.ModuleType("rclpy")

    def init(args=None, signal_handler_options=None):
        rec.inits += 1
        rec.signal_handler_options = signal_handler_options
        context.valid = True

    def try_shutdown():
        rec.shutdowns += 1
        context.valid = False
        rec.events.append(("try_shutdown",))

    def ok(context=None):
        return context_ok()

    rclpy.init, rclpy.try_shutdown, rclpy.ok = init, try_shutdown, ok
    signals = types.ModuleType("rclpy.signals")
    signals.SignalHandlerOptions = _Enum(ALL="ALL", SIGINT="SIGINT", SIGTERM="SIGTERM", NO="NO")
    rclpy.signals = signals
    rclpy.qos, rclpy.node, rclpy.executors, rclpy.clock, rclpy.callback_groups, rclpy.exceptions = (
        qos, node_mod, executors, clock_mod, groups, exceptions)
    rcl = types.ModuleType("rcl_interfaces")
    rcl.msg = rcl_msg
    for name, mod in {
        "rclpy": rclpy, "rclpy.qos": qos, "rclpy.node": node_mod, "rclpy.executors": executors,
        "rclpy.clock": clock_mod, "rclpy.callback_groups": groups, "rclpy.exceptions": exceptions,
        "rclpy.signals": signals, "rcl_interfaces": rcl, "rcl_interfaces.msg": rcl_msg,
    }.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return rec
