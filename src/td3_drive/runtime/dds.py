"""The node API on Eclipse Cyclone DDS: every node its own OS process, on ROS 2's wire format.

The third runtime beside ``local`` (one process, lockstep) and ``ros`` (rclpy).  It needs only
``pip install cyclonedds`` (the wheel carries the C library), and speaks what
rmw_cyclonedds_cpp speaks: DDS topics ``rt/<topic>``, types ``<pkg>::msg::dds_::<Name>_`` in
XCDR1 (:mod:`td3_drive.runtime.dds_types`), QoS as rmw maps ours (``create_readwrite_qos`` in
``src/rmw_node.cpp``: reliable with infinite blocking, transient local with a durability
service of the same history, no autodispose).  So a ROS 2 graph on the same network and
domain sees these topics, and a trainer can run where pip works but ROS 2 does not.

One thread delivers a node's messages and timers (a ``WaitSet``), so callbacks never run
concurrently, as in the other runtimes; the trainer learns in its own thread
(``async_updates``).  Timers run on ``/clock`` (sim time) like ``use_sim_time`` nodes, or on
the wall clock (``create_wall_timer``, and every timer when ``use_sim_time`` is false).

ROS 2 tools list these processes as nodes (``ros2 node list``, the node names in ``ros2 topic
info -v``): as rmw_cyclonedds_cpp does, the participant carries USER_DATA ``enclave=/;`` and
publishes on ``ros_discovery_info`` (``rmw_dds_common/msg/ParticipantEntitiesInfo``, reliable,
transient local, depth 1) which node owns which reader and writer, by GID: the 16-byte DDS
GUID, zero-padded to 24 bytes on Humble (``rmw_node.cpp``, ``convert_guid_to_gid``), bare on
Iron, Jazzy and later (``rmw_dds_common/msg/Gid`` is ``char[16]`` there), picked by ``ROS_DISTRO``
(:func:`graph_distro`).

Discovery stays on this machine by default (:func:`cyclone_config`): the loopback interface,
multicast off, unicast peers on 127.0.0.1.  ``TD3_DDS_INTERFACE=<name or address>`` joins a
real network the way a ROS 2 machine does (multicast discovery on that interface), and
``ROS_DOMAIN_ID`` picks the domain, as in ROS 2.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from cyclonedds.core import (
    DDSException,
    GuardCondition,
    InstanceState,
    Policy,
    Qos,
    ReadCondition,
    SampleState,
    ViewState,
    WaitSet,
)
from cyclonedds.domain import Domain, DomainParticipant
from cyclonedds.pub import DataWriter, ddspy_write
from cyclonedds.sub import DataReader, ddspy_take
from cyclonedds.topic import Topic
from cyclonedds.util import duration
import numpy as np
from rosbags.serde import SerdeError

from td3_drive import topics as T
from td3_drive.runtime import messages
from td3_drive.runtime.context import ContextBase, Timer
from td3_drive.runtime.dds_types import dds_topic_name, idl_class, ros_type_name
from td3_drive.runtime.diagnostics import worth_logging
from td3_drive.runtime.interface import RELIABLE_QOS, QoS

#: longest a reliable write waits for room in a slow reader's window before it is counted as dropped
MAX_BLOCKING_S = 2.0
#: longest one wait for data, so signals and stop() are seen promptly
MAX_WAIT_S = 0.05
#: samples taken from one reader per pass (the rest on the next pass: no reader starves the others)
TAKE_BATCH = 64
#: participants one machine can hold with multicast off (unicast discovery probes this many ports)
MAX_PARTICIPANTS = 40
#: what rmw_cyclonedds_cpp puts in a participant's USER_DATA (the SROS2 enclave: "/" without security);
#: ROS 2's graph cache adds only participants that carry it
ROS_USER_DATA = b"enclave=/;"
#: the DDS topic (no rt/ prefix) and type on which every ROS 2 participant lists its nodes' endpoints
DISCOVERY_TOPIC = "ros_discovery_info"
DISCOVERY_TYPE = "rmw_dds_common/msg/ParticipantEntitiesInfo"
#: ROS_DISTRO -> the typestore whose discovery types its graph speaks: Humble's GIDs are 24 bytes, Iron's and
#: later ones 16 (rmw_dds_common/msg/Gid char[16], the same type as Jazzy's); unset: humble
GRAPH_DISTROS = {"humble": "humble", "iron": "jazzy", "jazzy": "jazzy", "kilted": "jazzy", "rolling": "jazzy"}

log = logging.getLogger(__name__)
#: what a received sample that does not decode raises: it is skipped and counted, never delivered
UNDECODABLE = (SerdeError,)


# --------------------------------------------------------------------------- configuration
def cyclone_config(interface: str | None = None) -> str:
    """The Cyclone DDS configuration (XML) of a participant.

    ``interface`` None: loopback only (tests, CI, the embedded default): bind 127.0.0.1, no
    multicast, discovery by unicast to 127.0.0.1 over the first ``MAX_PARTICIPANTS``
    participant ports, so nothing leaves the machine.  Otherwise that interface (a name such as
    ``eth0`` or an address), with Cyclone's default multicast discovery, as rmw_cyclonedds_cpp
    uses it.  Either way: 64 KB datagrams in 64 KB DDSI fragments (the default 1344 B fragments
    cut an 800x600 camera frame into 1,430 and cost 2-3 ms of image -> control latency), a
    socket receive buffer of up to 4 MB where ``net.core.rmem_max`` allows it (a frame's burst
    fits; never required, so a stock kernel still starts), and a writer cache that holds a 7 MB
    weight broadcast.
    """
    if interface is None:
        network = ('<Interfaces><NetworkInterface address="127.0.0.1"/></Interfaces>'
                   "<AllowMulticast>false</AllowMulticast>")
        discovery = ("<Discovery><ParticipantIndex>auto</ParticipantIndex>"
                     f"<MaxAutoParticipantIndex>{MAX_PARTICIPANTS}</MaxAutoParticipantIndex>"
                     '<Peers><Peer address="127.0.0.1"/></Peers></Discovery>')
    else:
        attribute = "address" if interface[:1].isdigit() else "name"
        network = f'<Interfaces><NetworkInterface {attribute}="{interface}"/></Interfaces>'
        discovery = ""
    return ('<CycloneDDS xmlns="https://cdds.io/config"><Domain Id="any">'
            f"<General>{network}<MaxMessageSize>65500B</MaxMessageSize><FragmentSize>65000B</FragmentSize></General>{discovery}"
            "<Internal><SocketReceiveBufferSize min=\"default\" max=\"4MB\"/><Watermarks><WhcHigh>16MB</WhcHigh></Watermarks></Internal>"
            "</Domain></CycloneDDS>")


def domain_id() -> int:
    """``ROS_DOMAIN_ID`` (0 when unset), as ROS 2 reads it."""
    value = os.environ.get("ROS_DOMAIN_ID", "0").strip() or "0"
    if not value.isdigit() or int(value) > 232:
        raise ValueError(f"ROS_DOMAIN_ID must be an integer 0..232, got {value!r}")
    return int(value)


_DOMAINS: dict[int, tuple[Domain, str]] = {}


def _domain(domain: int, config: str) -> Domain:
    """The process's Domain ``domain`` with this configuration (Cyclone allows one per id and process)."""
    if domain not in _DOMAINS:
        _DOMAINS[domain] = (Domain(domain, config), config)
    elif _DOMAINS[domain][1] != config:
        raise ValueError(f"DDS domain {domain} already runs in this process with another configuration")
    return _DOMAINS[domain][0]


def dds_qos(qos: QoS) -> Qos:
    """Our QoS presets as rmw_cyclonedds_cpp maps the same rclpy profile."""
    history = Policy.History.KeepLast(qos.depth)
    policies = [
        history,
        Policy.Reliability.Reliable(duration(seconds=MAX_BLOCKING_S)) if qos.reliable else Policy.Reliability.BestEffort,
        Policy.WriterDataLifecycle(autodispose=False),
        Policy.DataRepresentation(use_cdrv0_representation=True),  # XCDR1, as ROS 2 humble
    ]
    if qos.transient_local:
        policies += [Policy.Durability.TransientLocal,
                     Policy.DurabilityService(0, history, -1, -1, -1)]
    else:
        policies.append(Policy.Durability.Volatile)
    return Qos(*policies)


# --------------------------------------------------------------------------- the runtime
@dataclass
class _Subscription:
    reader: DataReader
    condition: ReadCondition
    type_name: str
    topic: str
    callback: Callable[[Any], None]


class DdsPublisher:
    def __init__(self, runtime: "DdsRuntime", writer: DataWriter, topic: str, type_name: str) -> None:
        self._runtime, self._writer, self.topic, self.type_name = runtime, writer, topic, type_name
        self.published = 0
        self.dropped = 0

    def subscribers(self) -> int:
        """Readers (in any process) this publisher is matched with now."""
        return len(self._writer.get_matched_subscriptions())

    def publish(self, msg: Any) -> None:
        if msg.__msgtype__ != self.type_name:
            raise TypeError(f"{self.topic} carries {self.type_name}, got {msg.__msgtype__}")
        if self.type_name == T.CLOCK:
            self._runtime.set_sim_time(messages.seconds(msg.clock))
        code = ddspy_write(self._writer._ref, wire_payload(msg, self.type_name))
        if code < 0:  # a reliable reader too slow for MAX_BLOCKING_S: drop, count, go on
            self.dropped += 1
            log.warning("%s: write failed (%s); %d dropped so far", self.topic, DDSException(code), self.dropped)
            return
        self.published += 1


def wire_payload(msg: Any, type_name: str, distro: str = "humble") -> bytes | memoryview:
    """The serialized sample a writer hands to Cyclone: rosbags' CDR, zero-padded to a multiple of 4.

    What Cyclone's own ``DataWriter.write`` sends for ``to_dds(msg)`` (``test_dds`` checks it for every
    type) and what rmw_cyclonedds_cpp sends (``serdata_rmw::resize`` pads the same way), but built by
    rosbags' generated serializer into one preallocated buffer and passed on without a copy: 0.08 ms
    for an 800x600 bgra8 frame, where Cyclone's Python serializer grows its buffer in steps (3.5 ms)
    and a ``bytes`` copy of the result alone takes 1.8 ms (fresh pages).
    """
    cdr = messages.typestore(distro).serialize_cdr(msg, type_name)  # a memoryview of rosbags' buffer
    padding = (0 - len(cdr)) % 4
    return bytes(cdr) + bytes(padding) if padding else cdr


def from_wire(payload: bytes, type_name: str) -> Any:
    """A received sample (what :func:`wire_payload` sends, or a ROS 2 node) -> the rosbags message.

    rosbags' ``deserialize_cdr`` over a view of the bytes Cyclone handed over: number arrays are read
    in place, a camera frame is not copied; 4-6x faster than Cyclone's Python deserializer plus a
    conversion into rosbags' classes.  Raises rosbags' ``SerdeError`` on bytes that do not decode."""
    return messages.deserialize(memoryview(payload), type_name)


#: the types whose rosbags serializer and reader this process has generated
_PRIMED: set[str] = set()


def prime_codec(type_name: str) -> None:
    """Generate a type's serializer and reader now, while the node is built: rosbags generates them on
    first use, 3-10 ms per type, which would otherwise land on the first message of the control path."""
    if type_name not in _PRIMED:
        from_wire(bytes(wire_payload(messages.new_message(type_name), type_name)), type_name)
        _PRIMED.add(type_name)


def graph_distro() -> str:
    """The ROS 2 graph these processes join, for its GID layout: ``ROS_DISTRO`` (a ROS 2 setup.bash sets
    it; export it on a pip-only machine joining a Jazzy graph), Humble when unset."""
    distro = os.environ.get("ROS_DISTRO", "").strip().lower() or "humble"
    if distro not in GRAPH_DISTROS:
        raise ValueError(f"ROS_DISTRO={distro!r}: the DDS runtime knows {', '.join(GRAPH_DISTROS)}")
    return GRAPH_DISTROS[distro]


def gid(entity: Any, distro: str = "humble") -> bytes:
    """An entity's rmw GID as rmw_cyclonedds_cpp makes it: its DDS GUID (16 bytes), zero-padded to 24
    on Humble."""
    return entity.guid.bytes.ljust(24, b"\0") if distro == "humble" else entity.guid.bytes


def ros_node_name(name: str) -> tuple[str, str]:
    """'v0/policy' -> ('/v0', 'policy'); 'policy' -> ('/', 'policy'): a node's namespace and base name."""
    namespace, _, base = name.strip("/").rpartition("/")
    return "/" + namespace, base


class DdsContext(ContextBase):
    """NodeContext for one node of a :class:`DdsRuntime`."""

    def __init__(self, runtime: "DdsRuntime", name: str) -> None:
        super().__init__(name, runtime.parameters)
        self._runtime = runtime
        runtime.announce(name)

    def create_publisher(self, type_name: str, topic: str, qos: QoS = RELIABLE_QOS) -> DdsPublisher:
        type_name = messages.normalize_type_name(type_name)
        return self._runtime.publisher(type_name, topic, qos, node=self.name)

    def create_subscription(
        self, type_name: str, topic: str, callback: Callable[[Any], None], qos: QoS = RELIABLE_QOS
    ) -> None:
        self._runtime.subscribe(messages.normalize_type_name(type_name), topic, callback, qos, node=self.name)

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> None:
        self._runtime.add_timer(period_s, callback, wall=not self._runtime.use_sim_time)

    def create_wall_timer(self, period_s: float, callback: Callable[[], None]) -> None:
        """A timer on the wall clock: it fires even when /clock stalls (watchdogs, pacing)."""
        self._runtime.add_timer(period_s, callback, wall=True)

    def now(self) -> float:
        return self._runtime.now()


class DdsRuntime:
    """One DDS participant per process; :meth:`spin` delivers its messages and timers in this thread."""

    def __init__(self, parameters: dict[str, dict[str, Any]] | None = None, *, use_sim_time: bool = True,
                 interface: str | None = None, domain: int | None = None) -> None:
        self.parameters = parameters or {}
        self.use_sim_time = use_sim_time
        self.domain_id = domain_id() if domain is None else domain
        interface = interface if interface is not None else (os.environ.get("TD3_DDS_INTERFACE") or None)
        self.config = cyclone_config(interface)
        _domain(self.domain_id, self.config)
        self.distro = graph_distro()  # before any entity: a bad ROS_DISTRO fails here, clearly
        self.participant = DomainParticipant(self.domain_id, qos=Qos(Policy.Userdata(ROS_USER_DATA)))
        self._waitset = WaitSet(self.participant)
        self._wake = GuardCondition(self.participant)
        self._waitset.attach(self._wake)
        self._topics: dict[str, Topic] = {}
        self._subscriptions: list[_Subscription] = []
        self._timers: list[Timer] = []
        self._sim_time_s = 0.0
        self._clock_seen = False
        self._stop = threading.Event()
        self.publishers: list[DdsPublisher] = []
        #: samples per topic that Cyclone delivered but that do not decode as the type (skipped)
        self.undecodable: dict[str, int] = {}
        self._following_clock = False
        self._recording: tuple | None = None
        self._recorded: set[str] = set()
        #: per node name, the GIDs of its readers and writers (what ros_discovery_info lists)
        self.node_entities: dict[str, dict[str, list[bytes]]] = {}
        self._discovery_writer: DataWriter | None = None

    # --- entities ---------------------------------------------------------------------
    def context(self, name: str) -> DdsContext:
        return DdsContext(self, name)

    def _topic(self, type_name: str, topic: str) -> Topic:
        existing = self._topics.get(topic)
        if existing is None:
            prime_codec(type_name)  # every writer and reader of the type comes through here first
            existing = self._topics[topic] = Topic(self.participant, dds_topic_name(topic), idl_class(type_name))
        elif existing.data_type is not idl_class(type_name):
            raise TypeError(f"topic {topic} already carries {existing.data_type.__name__}, not {type_name}")
        return existing

    def publisher(self, type_name: str, topic: str, qos: QoS, node: str | None = None) -> DdsPublisher:
        writer = DataWriter(self.participant, self._topic(type_name, topic), qos=dds_qos(qos))
        publisher = DdsPublisher(self, writer, topic, type_name)
        self.publishers.append(publisher)
        if node is not None:
            self.announce(node, writer=writer)
        return publisher

    def subscribe(self, type_name: str, topic: str, callback: Callable[[Any], None], qos: QoS,
                  node: str | None = None) -> None:
        reader = DataReader(self.participant, self._topic(type_name, topic), qos=dds_qos(qos))
        condition = ReadCondition(reader, SampleState.Any | ViewState.Any | InstanceState.Any)
        self._waitset.attach(condition)
        self._subscriptions.append(_Subscription(reader, condition, type_name, topic, callback))
        if node is not None:
            self.announce(node, reader=reader)

    def announce(self, node: str, *, reader: DataReader | None = None, writer: DataWriter | None = None) -> None:
        """List ``node`` (and a new reader or writer of it) on ros_discovery_info, as a ROS 2 node does."""
        entities = self.node_entities.setdefault(node, {"readers": [], "writers": []})
        if reader is not None:
            entities["readers"].append(gid(reader, self.distro))
        if writer is not None:
            entities["writers"].append(gid(writer, self.distro))
        if self._discovery_writer is None:
            topic = Topic(self.participant, DISCOVERY_TOPIC, idl_class(DISCOVERY_TYPE, self.distro))
            self._discovery_writer = DataWriter(self.participant, topic, qos=dds_qos(
                QoS(depth=1, reliable=True, transient_local=True)))
        store = messages.typestore(self.distro)
        gid_msg = store.types["rmw_dds_common/msg/Gid"]

        def as_gid(data: bytes) -> Any:
            return gid_msg(data=np.frombuffer(data, dtype=np.uint8))

        info = store.types[DISCOVERY_TYPE](gid=as_gid(gid(self.participant, self.distro)), node_entities_info_seq=[
            store.types["rmw_dds_common/msg/NodeEntitiesInfo"](
                *ros_node_name(name), [as_gid(g) for g in ent["readers"]], [as_gid(g) for g in ent["writers"]])
            for name, ent in self.node_entities.items()])
        ddspy_write(self._discovery_writer._ref, wire_payload(info, DISCOVERY_TYPE, self.distro))

    def add_timer(self, period_s: float, callback: Callable[[], None], wall: bool) -> None:
        start = time.monotonic() if wall else self._sim_time_s
        self._timers.append(Timer(period_s, callback, start + period_s, wall))

    def wait_for_subscribers(self, topic: str, count: int, timeout_s: float) -> bool:
        """Until the publishers of ``topic`` in this process reach ``count`` readers (False: timed out)."""
        deadline = time.monotonic() + timeout_s
        mine = [p for p in self.publishers if p.topic == topic]
        while max((p.subscribers() for p in mine), default=0) < count:
            if time.monotonic() >= deadline or self._stop.is_set():
                return False
            time.sleep(0.05)
        return True

    # --- time ---------------------------------------------------------------------------
    def now(self) -> float:
        """Seconds: the last /clock (published or received) with use_sim_time, else the wall clock."""
        return self._sim_time_s if self.use_sim_time else time.time()

    def set_sim_time(self, seconds: float) -> None:
        self._sim_time_s = seconds
        self._clock_seen = True

    def follow_clock(self) -> None:
        """Take the time from /clock from now on (once; :meth:`spin` calls it with use_sim_time)."""
        if not self._following_clock:
            self._following_clock = True
            self.subscribe(T.CLOCK, T.Topics.clock,
                           lambda msg: self.set_sim_time(messages.seconds(msg.clock)),
                           QoS(depth=1, reliable=False))  # rclpy's TimeSource subscribes like this

    def record(self, wanted: Callable[[str], bool], tap: Callable[[str, str, Any, float], None],
               qos: QoS = QoS(depth=100, reliable=True)) -> None:
        """Subscribe to every topic that a writer anywhere in the domain publishes and ``wanted(topic)``
        accepts, as discovery finds it (``ros2 bag record`` works the same way), and hand each message to
        ``tap(topic, type_name, msg, now)``: a :class:`~td3_drive.runtime.bag.BagRecorder` fits."""
        from cyclonedds.builtin import BuiltinDataReader, BuiltinTopicDcpsPublication

        self._recording = (BuiltinDataReader(self.participant, BuiltinTopicDcpsPublication), wanted, tap, qos)

    def _discover(self) -> None:
        reader, wanted, tap, qos = self._recording
        for endpoint in reader.take(N=TAKE_BATCH):
            name = getattr(endpoint, "topic_name", "") or ""
            topic = name[2:] if name.startswith("rt/") else None
            if topic is None or topic in self._recorded or not wanted(topic):
                continue
            try:
                type_name = ros_type_name(endpoint.type_name)
                messages.message_class(type_name)
            except (KeyError, ValueError):
                log.warning("not recording %s: unknown type %s", topic, endpoint.type_name)
                continue
            self._recorded.add(topic)
            self.subscribe(type_name, topic, lambda msg, t=topic, n=type_name: tap(t, n, msg, self.now()), qos)

    # --- spinning -------------------------------------------------------------------------
    def stop(self) -> None:
        """End :meth:`spin` (thread- and signal-safe)."""
        self._stop.set()
        self._wake.set(True)

    def spin(self, until: Callable[[], bool] | None = None, timeout_s: float | None = None) -> None:
        """Deliver messages and fire timers until :meth:`stop`, ``until()`` or ``timeout_s``."""
        if self.use_sim_time:
            # only now, once the node is built: a simulator that waits for every node to listen to
            # /clock (processes.py) then starts when they can all act, not when they began importing
            self.follow_clock()
        deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            if until is not None and until():
                return
            self.spin_once(min(MAX_WAIT_S, max(0.0, deadline - time.monotonic()), self._next_wall_timer_in()))

    def spin_once(self, timeout_s: float = MAX_WAIT_S) -> int:
        """Wait up to ``timeout_s`` for data, deliver what arrived, fire due timers; returns messages delivered."""
        self._waitset.wait(duration(seconds=max(0.0, timeout_s)))
        if self._recording is not None:
            self._discover()
        delivered = 0
        for sub in self._subscriptions:
            # DataReader.take with the condition, minus its copy and decoding of each payload (from_wire)
            taken = ddspy_take(sub.reader._ref, sub.condition.mask, TAKE_BATCH)
            if isinstance(taken, int):
                raise DDSException(taken, f"taking from {sub.topic}")
            for payload, info in taken:
                if not info.valid_data:
                    continue  # an instance state change (writer gone), not data
                try:
                    msg = from_wire(payload, sub.type_name)
                except UNDECODABLE as exc:  # e.g. a peer's string that is not UTF-8: Cyclone checks lengths only
                    self._undecodable(sub.topic, exc)
                    continue
                sub.callback(msg)
                delivered += 1
                self._fire_due_timers()
        self._fire_due_timers()
        return delivered

    def _undecodable(self, topic: str, error: Exception) -> None:
        count = self.undecodable[topic] = self.undecodable.get(topic, 0) + 1
        if worth_logging(count):
            log.warning("%s: skipped a sample that does not decode (x%d): %s", topic, count, error)

    def _next_wall_timer_in(self) -> float:
        wall = [t.next_s for t in self._timers if t.wall]
        return max(0.0, min(wall) - time.monotonic()) if wall else MAX_WAIT_S

    def _fire_due_timers(self) -> None:
        wall_now = time.monotonic()
        for timer in self._timers:
            if timer.wall or self._clock_seen:  # sim time starts with the first /clock
                timer.fire_due(wall_now if timer.wall else self._sim_time_s)

    def close(self) -> None:
        """Delete the participant (and with it every reader and writer): peers see this node leave."""
        self._stop.set()
        self.participant.__del__()  # dds_delete now rather than whenever the garbage collector gets to it


# --------------------------------------------------------------------------- process entry point
def run_node(name: str, factory: Callable[[DdsContext], Any], parameters: dict[str, dict[str, Any]], *,
             until: Callable[[Any], bool] | None = None, started: Callable[[Any, DdsRuntime], None] | None = None,
             use_sim_time: bool = True) -> Any:
    """Build one node on its own DdsRuntime, call ``started(node, runtime)``, spin until SIGINT/SIGTERM
    or ``until(node)``; then ``close()`` the node (a trainer saves its checkpoint) and return it.  The
    DDS analogue of :func:`td3_drive.runtime.ros.run_node`."""
    runtime = DdsRuntime(parameters, use_sim_time=use_sim_time)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: runtime.stop())
    node = factory(runtime.context(name))
    try:
        if started is not None:
            started(node, runtime)
        runtime.spin(until=None if until is None else (lambda: until(node)))
    finally:
        node.close()
        runtime.close()
    return node
