"""The Cyclone DDS runtime: ROS 2 names, the wire format, QoS, loopback-only discovery, delivery."""
from __future__ import annotations

import time
import zlib
import xml.etree.ElementTree as ET

import numpy as np
import pytest

pytest.importorskip("cyclonedds")

import cyclonedds.pub

from td3_drive import topics as T
from td3_drive.runtime import dds, dds_types, messages
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, SENSOR_QOS

#: every message type a td3_drive node publishes or subscribes to (topics.py's constants)
STACK_TYPES = sorted({value for name, value in vars(T).items()
                      if name.isupper() and isinstance(value, str) and value.count("/") == 2 and "/msg/" in value})


@pytest.fixture(scope="module")
def stack_messages(tmp_path_factory) -> dict[str, object]:
    """One message of each type, as the nodes publish it: 60 ticks of the embedded training graph
    (learning included, so weights and feature topics are real), first message per type kept."""
    from td3_drive.app import config, embedded

    params = config.compose("train", 0, [], {
        "trainer": {"run_dir": str(tmp_path_factory.mktemp("run")), "device": "cpu", "learning_starts": 20,
                    "batch_size": 8, "checkpoint_every": 0, "log_interval": 1000, "weights_every": 10},
        "policy": {"device": "cpu", "random_steps": 20},
        "simulator": {"other_vehicles": 1},
    }, training=True)
    graph = embedded.build_graph(params)
    seen: dict[str, object] = {}
    graph.runtime.add_tap(lambda topic, type_name, msg, t: seen.setdefault(type_name, msg))
    graph.run(60)
    graph.close()
    return seen


def test_the_embedded_graph_publishes_most_stack_types(stack_messages):
    # the rest: published by the CARLA bridge, on events 60 ticks did not see, or latched before the tap
    assert set(STACK_TYPES) - set(stack_messages) <= {T.JOINT_STATE, T.POSE_STAMPED, T.BOOL, T.COLLISION,
                                                      T.LANE_INVASION, T.WORLD_INFO}
    assert len(stack_messages[T.UINT8_ARRAY].data) > 1_000_000  # actor weights


def random_message(type_name: str, rng: np.random.Generator) -> object:
    """Every field set to a random non-default value (sequences of 1-3 elements), from the definition."""
    from rosbags.typesys.base import Nodetype

    def value(node):
        kind, detail = node
        if kind == Nodetype.BASE:
            base = detail[0]
            if base == "string":
                return "".join(rng.choice(list("abcxyz/_0")) for _ in range(rng.integers(1, 9)))
            if base == "bool":
                return True
            if base.startswith("float"):
                return float(np.dtype(messages.numpy_dtype(base)).type(rng.normal() * 100))
            info = np.iinfo(messages.numpy_dtype(base))
            return int(rng.integers(max(info.min, -100), min(info.max, 100), endpoint=True) or 1)  # int8..uint64
        if kind == Nodetype.NAME:
            return random_message(detail, rng)
        element, length = detail
        count = length if kind == Nodetype.ARRAY else int(rng.integers(1, 4))
        items = [value(element) for _ in range(count)]
        if element[0] == Nodetype.BASE and element[1][0] not in ("string",):
            return np.array(items, dtype=messages.numpy_dtype(element[1][0]))
        return items

    fields = messages.typestore().fielddefs[type_name][1]
    return messages.new_message(type_name, **{name: value(node) for name, node in fields})


def _example(type_name: str, stack_messages: dict, variant: str) -> object:
    if variant == "random" or type_name not in stack_messages:
        return random_message(type_name, np.random.default_rng(zlib.crc32(type_name.encode())))
    return stack_messages[type_name]


@pytest.mark.parametrize("variant", ["as_published", "random"])
@pytest.mark.parametrize("type_name", STACK_TYPES)
def test_what_cyclone_sends_is_what_rosbags_serializes(type_name, variant, stack_messages, monkeypatch):
    """The payload handed to Cyclone's C writer (``ddspy_write``) is rosbags' ``serialize_cdr``, byte
    for byte, encapsulation header included, then the padding rmw_cyclonedds_cpp adds too, and it is
    what Cyclone's own serializer makes of the DDS type we generate; for every type: a message as the nodes published
    it, and one with every field random; and a reader in another participant gets it back."""
    msg = _example(type_name, stack_messages, variant)
    sent: list[bytes] = []
    write = cyclonedds.pub.ddspy_write  # Cyclone's C writer, as the runtime calls it
    monkeypatch.setattr(dds, "ddspy_write", lambda ref, data: (sent.append((ref, bytes(data))), write(ref, data))[1])

    writer_rt, reader_rt = dds.DdsRuntime({}, domain=DOMAIN), dds.DdsRuntime({}, domain=DOMAIN)
    try:
        topic = f"/test/{variant}/" + type_name.replace("/", "_")
        received: list = []
        reader_rt.context("reader").create_subscription(type_name, topic, received.append, LATCHED_QOS)
        writer_rt.context("writer").create_publisher(type_name, topic, LATCHED_QOS).publish(msg)
        reader_rt.spin(until=lambda: bool(received), timeout_s=10)
    finally:
        writer_rt.close()
        reader_rt.close()
    # the nodes' ros_discovery_info samples (ros2 node list) are no payload of this topic
    announcing = {rt._discovery_writer._ref for rt in (writer_rt, reader_rt)}
    sent = [data for ref, data in sent if ref not in announcing]

    cdr = messages.serialize(msg, type_name)
    # the payload is the CDR, zero-padded to a multiple of 4, exactly as rmw_cyclonedds_cpp (humble)
    # sizes it: serdata_rmw::resize in src/serdata.cpp pads with (0 - size) % 4 zero bytes
    assert sent == [cdr + bytes((0 - len(cdr)) % 4)]
    # ... and what Cyclone's own writer makes of the generated DDS type: the type we declare on the wire
    # (DataWriter.write: serialize, then pad to 4) describes exactly these bytes
    own = dds_types.to_dds(msg, type_name).serialize(use_version_2=False)
    assert own.ljust((len(own) + 3) & ~3, b"\0") == sent[0]
    assert cdr[:4] == b"\x00\x01\x00\x00"  # CDR_LE: XCDR1, as ROS 2 humble sends
    assert len(received) == 1
    assert messages.serialize(received[0], type_name) == cdr


DOMAIN = 201  # tests keep to a domain of their own (and, by the loopback config, to this machine)


def test_ros2_names():
    assert dds_types.dds_type_name("sensor_msgs/msg/Image") == "sensor_msgs::msg::dds_::Image_"
    assert dds_types.dds_type_name("carla_msgs/CarlaEgoVehicleControl") == "carla_msgs::msg::dds_::CarlaEgoVehicleControl_"
    assert dds_types.idl_class(T.IMAGE).__idl_typename__ == "sensor_msgs::msg::dds_::Image_"
    assert dds_types.dds_topic_name("/v0/td3/features/actor/l2_norm") == "rt/v0/td3/features/actor/l2_norm"
    assert dds_types.ros_type_name("carla_msgs::msg::dds_::CarlaEgoVehicleControl_") == T.CONTROL
    for bad in ("sensor_msgs::msg::Image", "a::b::dds_::C"):
        with pytest.raises(ValueError):
            dds_types.ros_type_name(bad)
    for bad in ("relative/name", "/trailing/", "/a//b"):
        with pytest.raises(ValueError):
            dds_types.dds_topic_name(bad)


def test_loopback_config_keeps_discovery_and_data_on_127_0_0_1():
    root = ET.fromstring(dds.cyclone_config())
    ns = {"c": "https://cdds.io/config"}
    interfaces = root.findall(".//c:Interfaces/c:NetworkInterface", ns)
    assert [i.attrib for i in interfaces] == [{"address": "127.0.0.1"}]
    assert root.find(".//c:General/c:AllowMulticast", ns).text == "false"
    assert [p.attrib["address"] for p in root.findall(".//c:Discovery/c:Peers/c:Peer", ns)] == ["127.0.0.1"]


def test_a_named_interface_is_the_switch_to_a_real_network():
    root = ET.fromstring(dds.cyclone_config("eth0"))
    ns = {"c": "https://cdds.io/config"}
    assert root.find(".//c:Interfaces/c:NetworkInterface", ns).attrib == {"name": "eth0"}
    assert root.find(".//c:Discovery/c:Peers", ns) is None  # multicast discovery, as ROS 2 machines use


def test_ros_domain_id(monkeypatch):
    monkeypatch.setenv("ROS_DOMAIN_ID", "42")
    assert dds.domain_id() == 42
    monkeypatch.delenv("ROS_DOMAIN_ID")
    assert dds.domain_id() == 0
    monkeypatch.setenv("ROS_DOMAIN_ID", "abc")
    with pytest.raises(ValueError, match="ROS_DOMAIN_ID"):
        dds.domain_id()


def test_qos_presets_map_as_rmw_cyclonedds_maps_them():
    from cyclonedds.core import Policy

    sensor, latched, reliable = dds.dds_qos(SENSOR_QOS), dds.dds_qos(LATCHED_QOS), dds.dds_qos(RELIABLE_QOS)
    assert Policy.Reliability.BestEffort in sensor and Policy.History.KeepLast(5) in sensor
    assert Policy.Durability.Volatile in sensor
    assert Policy.Durability.TransientLocal in latched and Policy.History.KeepLast(1) in latched
    assert Policy.Reliability.Reliable in latched and Policy.Reliability.Reliable in reliable
    assert Policy.History.KeepLast(10) in reliable
    for qos in (sensor, latched, reliable):
        assert Policy.DataRepresentation(use_cdrv0_representation=True) in qos
        assert Policy.WriterDataLifecycle(autodispose=False) in qos


def test_latched_weights_reach_a_late_subscriber_and_timers_follow_the_clock():
    """A 7 MB transient-local message reaches a reader created after it was written; a sim-time
    timer fires as /clock advances, not as the wall clock does."""
    a, b = dds.DdsRuntime({}, domain=DOMAIN), dds.DdsRuntime({}, domain=DOMAIN)
    try:
        weights = np.arange(7_000_000, dtype=np.uint32).astype(np.uint8)
        a.context("trainer").create_publisher(T.UINT8_ARRAY, "/td3/actor_weights", LATCHED_QOS).publish(
            messages.new_message(T.UINT8_ARRAY, data=weights))
        clock = a.context("simulator").create_publisher(T.CLOCK, "/clock", RELIABLE_QOS)
        got: list = []
        fired: list[float] = []
        ctx = b.context("policy")
        ctx.create_subscription(T.UINT8_ARRAY, "/td3/actor_weights", got.append, LATCHED_QOS)
        ctx.create_timer(1.0, lambda: fired.append(ctx.now()))
        b.spin(until=lambda: bool(got), timeout_s=10)
        assert len(got) == 1 and np.array_equal(got[0].data, weights)

        time.sleep(0.3)
        for t in (0.5, 1.0, 1.5, 2.0, 3.0):
            clock.publish(messages.new_message(T.CLOCK, clock=messages.stamp(t)))
            b.spin(until=lambda t=t: ctx.now() == t, timeout_s=5)
        assert fired == [1.0, 2.0, 3.0]
    finally:
        a.close()
        b.close()


def test_a_sample_that_does_not_decode_is_skipped_counted_and_logged(caplog):
    """Cyclone checks a sample's lengths, not its text: a peer's frame_id that is not UTF-8 reaches the
    reader.  The runtime skips it, counts it per topic and logs it; the next sample is delivered, and
    the node is not taken down (it used to be: UnicodeDecodeError out of spin)."""
    writer_rt, reader_rt = dds.DdsRuntime({}, domain=DOMAIN), dds.DdsRuntime({}, domain=DOMAIN)
    try:
        received: list = []
        reader_rt.context("reader").create_subscription(T.HEADER, "/test/undecodable", received.append,
                                                        RELIABLE_QOS)
        publisher = writer_rt.context("writer").create_publisher(T.HEADER, "/test/undecodable", RELIABLE_QOS)
        assert writer_rt.wait_for_subscribers("/test/undecodable", 1, timeout_s=10)
        text = b"\xff\xfeab\x00"  # a CDR string: length, bytes, NUL
        payload = b"\x00\x01\x00\x00" + np.array([1, 2, len(text)], "<u4").tobytes() + text
        assert cyclonedds.pub.ddspy_write(publisher._writer._ref, payload + bytes(-len(payload) % 4)) == 0
        publisher.publish(messages.new_message(T.HEADER, frame_id="after"))
        reader_rt.spin(until=lambda: bool(received), timeout_s=10)
    finally:
        writer_rt.close()
        reader_rt.close()
    assert [msg.frame_id for msg in received] == ["after"]
    assert reader_rt.undecodable == {"/test/undecodable": 1}
    assert "/test/undecodable: skipped a sample that does not decode (x1)" in caplog.text


def test_every_stack_type_is_coded_before_its_first_message(monkeypatch):
    """Building a publisher or a subscription generates the type's serializer and reader (rosbags does it
    lazily, 3-10 ms, which would land on the first message): every type's default message goes through."""
    monkeypatch.setattr(dds, "_PRIMED", set())  # as in a fresh node process
    runtime = dds.DdsRuntime({}, domain=DOMAIN)
    try:
        ctx = runtime.context("primer")
        for i, type_name in enumerate(STACK_TYPES):
            if i % 2:
                ctx.create_publisher(type_name, f"/prime/t{i}", RELIABLE_QOS)
            else:
                ctx.create_subscription(type_name, f"/prime/t{i}", lambda msg: None, RELIABLE_QOS)
        assert dds._PRIMED == set(STACK_TYPES)
    finally:
        runtime.close()
    for type_name in STACK_TYPES:  # what priming runs: the default message, written and read back
        default = messages.new_message(type_name)
        back = dds.from_wire(bytes(dds.wire_payload(default, type_name)), type_name)
        assert messages.serialize(back) == messages.serialize(default), type_name


def test_bench_dds_leaves_out_the_warm_up_and_reports_steal():
    from td3_drive.app.bench_dds import cpu_times, latency_summary, steal_percent

    latencies = [90.0, 40.0] + [float(v) for v in range(1, 101)]
    summary = latency_summary(latencies, warmup=2)
    assert summary["warmup_max_ms"] == 90.0 and summary["measured_ticks"] == 100 and summary["max_ms"] == 100.0
    assert summary["p50_ms"] == pytest.approx(50.5) and summary["p99_ms"] == pytest.approx(np.percentile(range(1, 101), 99))
    assert latency_summary([5.0], warmup=3)["p99_ms"] is None  # nothing after the warm-up: no figure, no crash
    assert steal_percent((10, 1_000), (30, 1_200)) == 10.0
    assert steal_percent(None, (30, 1_200)) is None and steal_percent((10, 1_000), (10, 1_000)) is None
    now = cpu_times()
    if now is not None:  # Linux
        assert 0 <= now[0] <= now[1]


def test_bench_dds_refuses_more_ticks_than_the_simulator_keeps(capsys):
    from td3_drive.app import bench
    from td3_drive.sim.node import LATENCY_WINDOW

    with pytest.raises(SystemExit) as exit_info:  # an argument error, before any process starts
        bench.main(["dds", "--ticks", str(LATENCY_WINDOW), "--warmup-ticks", "1"])
    assert exit_info.value.code == 2 and "latency window" in capsys.readouterr().err


@pytest.mark.parametrize("distro, padding", [("humble", 8), ("iron", 0), ("jazzy", 0)])
def test_ros2_node_list_sees_the_nodes_of_a_dds_process(monkeypatch, distro, padding):
    """Defect 6: `ros2 node list` did not show --transport dds nodes (`ros2 topic info -v`:
    _CREATED_BY_BARE_DDS_APP_).  rmw_cyclonedds_cpp adds a participant to the ROS graph when its
    USER_DATA holds `enclave=/;`, and names the nodes and their endpoints from the participant's
    ros_discovery_info sample (rmw_dds_common humble graph_cache.cpp): both, as it writes them.
    Jazzy's GIDs are the bare 16-byte GUID (its Gid.msg is char[16]): a Humble-shaped sample left a
    real Jazzy `ros2 node list` empty."""
    from cyclonedds.builtin import BuiltinDataReader, BuiltinTopicDcpsParticipant
    from cyclonedds.sub import DataReader
    from cyclonedds.topic import Topic

    monkeypatch.setenv("ROS_DISTRO", distro)
    node_rt, peer = dds.DdsRuntime({}, domain=DOMAIN), dds.DdsRuntime({}, domain=DOMAIN)
    try:
        ctx = node_rt.context("v0/policy")
        ctx.create_publisher(T.CONTROL, "/carla/ego_vehicle/vehicle_control_cmd", RELIABLE_QOS)
        ctx.create_subscription(T.HEADER, "/v0/td3/episode_start", lambda m: None, LATCHED_QOS)
        reader = DataReader(peer.participant, Topic(peer.participant, "ros_discovery_info",
                                                    dds_types.idl_class("rmw_dds_common/msg/ParticipantEntitiesInfo",
                                                                        dds.GRAPH_DISTROS[distro])),
                            qos=dds.dds_qos(LATCHED_QOS))  # a late joiner, as `ros2 node list` is
        participants = BuiltinDataReader(peer.participant, BuiltinTopicDcpsParticipant)
        deadline, infos, seen = time.monotonic() + 10, [], {}
        while time.monotonic() < deadline and not (infos and node_rt.participant.guid in seen):
            infos += reader.take(N=10)
            seen.update({p.key: p for p in participants.take(N=10)})
            time.sleep(0.05)
        user_data = seen[node_rt.participant.guid].qos[cyclonedds.core.Policy.Userdata]
        assert user_data.data == b"enclave=/;"
        info = infos[-1]
        assert bytes(info.gid.data) == node_rt.participant.guid.bytes + bytes(padding)
        (node,) = info.node_entities_info_seq
        assert (node.node_namespace, node.node_name) == ("/v0", "policy")
        (writer,), (reader_gid,) = node.writer_gid_seq, node.reader_gid_seq
        assert bytes(writer.data) == node_rt.publishers[0]._writer.guid.bytes + bytes(padding)
        assert bytes(reader_gid.data) == node_rt._subscriptions[0].reader.guid.bytes + bytes(padding)
    finally:
        node_rt.close()
        peer.close()


def test_an_unknown_ros_distro_is_refused_clearly(monkeypatch):
    monkeypatch.setenv("ROS_DISTRO", "foxy")
    with pytest.raises(ValueError, match="ROS_DISTRO='foxy'"):
        dds.DdsRuntime({}, domain=DOMAIN)
