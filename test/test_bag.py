"""Bags: record through a LocalRuntime tap, read back field for field, play into a runtime."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from td3_drive import topics as T
from td3_drive.runtime import messages
from td3_drive.runtime.bag import BagRecorder, play_bag, read_bag
from td3_drive.runtime.local import LocalRuntime

TOPICS = T.Topics()


def assert_msg_equal(a: Any, b: Any, path: str = "msg") -> None:
    """Recursive comparison of rosbags messages; float fields compared at float32 precision."""
    if dataclasses.is_dataclass(a):
        assert type(a).__name__ == type(b).__name__, path
        for f in dataclasses.fields(a):
            assert_msg_equal(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_msg_equal(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert np.float32(a) == np.float32(b), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def sample_messages() -> list[tuple[str, Any]]:
    image = messages.new_message(
        T.IMAGE, header=messages.new_message(T.HEADER, stamp=messages.stamp(1.25), frame_id="camera"),
        height=2, width=3, encoding="rgb8", step=9,
        data=np.arange(18, dtype=np.uint8),
    )
    control = messages.new_message(T.CONTROL, throttle=0.75, steer=-0.3, brake=0.0, gear=1, reverse=True)
    odom = messages.new_message(T.ODOMETRY, child_frame_id="ego_vehicle")
    odom.pose.pose.position.x = 12.5
    odom.twist.covariance[:] = np.arange(36, dtype=np.float64)
    speed = messages.new_message(T.FLOAT32, data=8.5)
    collision = messages.new_message(T.COLLISION, other_actor_id=42)
    return [
        (TOPICS.camera, image),
        (TOPICS.control, control),
        (TOPICS.odometry, odom),
        (TOPICS.speedometer, speed),
        (TOPICS.collision, collision),
    ]


def record(path: Path, **filters: Any) -> tuple[list[tuple[str, Any, float]], BagRecorder]:
    runtime = LocalRuntime()
    ctx = runtime.context("recorder_test")
    pubs = {topic: ctx.create_publisher(msg.__msgtype__, topic) for topic, msg in sample_messages()}
    sent = []
    with BagRecorder(path, **filters) as rec:
        runtime.add_tap(rec)
        for tick in range(3):
            runtime.time_s = 1.0 + 0.05 * tick
            for topic, msg in sample_messages():
                pubs[topic].publish(msg)
                sent.append((topic, msg, runtime.time_s))
            runtime.spin()
    runtime.publish(TOPICS.speedometer, messages.new_message(T.FLOAT32, data=1.0))  # after close: ignored
    assert rec.dropped_after_close == int(rec.wants(TOPICS.speedometer))
    return sent, rec


def test_record_and_read_back_field_for_field(tmp_path: Path):
    bag = tmp_path / "drive"
    sent, rec = record(bag)
    got = list(read_bag(bag))
    assert len(got) == len(sent) == 15
    for (topic, msg, t), (rtopic, rtype, rmsg, stamp_ns) in zip(sent, got):
        assert rtopic == topic and rtype == msg.__msgtype__
        assert stamp_ns == round(t * 1e9)
        assert_msg_equal(msg, rmsg)
    assert rec.counts[TOPICS.camera] == 3


def test_bag_layout_is_what_ros2_bag_expects(tmp_path: Path):
    bag = tmp_path / "drive"
    record(bag)
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == 8 and meta["storage_identifier"] == "mcap"
    assert meta["relative_file_paths"] == ["drive.mcap"] and (bag / "drive.mcap").exists()
    assert meta["message_count"] == 15
    types = {t["topic_metadata"]["name"]: t["topic_metadata"]["type"] for t in meta["topics_with_message_count"]}
    assert types[TOPICS.control] == "carla_msgs/msg/CarlaEgoVehicleControl"
    assert all(isinstance(t["topic_metadata"]["offered_qos_profiles"], str) for t in meta["topics_with_message_count"])
    with Reader(bag) as reader:  # the MCAP carries the message definitions, carla_msgs included
        conn = next(c for c in reader.connections if c.topic == TOPICS.control)
        assert "float32 throttle" in conn.msgdef.data


def test_recorder_filters(tmp_path: Path):
    record(tmp_path / "a", topics=[TOPICS.control])
    assert {t for t, *_ in read_bag(tmp_path / "a")} == {TOPICS.control}
    record(tmp_path / "b", topics=[TOPICS.control], prefixes=["/carla/ego_vehicle/rgb"])
    assert {t for t, *_ in read_bag(tmp_path / "b")} == {TOPICS.control, TOPICS.camera}
    record(tmp_path / "c", prefixes=["/nothing"])
    assert list(read_bag(tmp_path / "c")) == []
    assert {t for t, *_ in read_bag(tmp_path / "a", topics=[TOPICS.camera])} == set()


def test_refuses_to_overwrite(tmp_path: Path):
    BagRecorder(tmp_path / "x").close()
    with pytest.raises(Exception, match="exists"):
        BagRecorder(tmp_path / "x")


def write_sqlite(path: Path, bad_payload: bytes | None = None) -> list[tuple[str, Any, int]]:
    store = messages.typestore()
    items = []
    with Writer(path, version=8, storage_plugin=StoragePlugin.SQLITE3) as writer:
        conns = {}
        for i in range(4):
            for topic, msg in sample_messages()[:3]:
                if topic not in conns:
                    conns[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=store)
                stamp = 10**9 * (5 + i) + {TOPICS.camera: 0, TOPICS.control: 2, TOPICS.odometry: 1}[topic]
                writer.write(conns[topic], stamp, store.serialize_cdr(msg, msg.__msgtype__))
                items.append((topic, msg, stamp))
            if bad_payload is not None and i == 1:
                writer.write(conns[TOPICS.camera], 10**9 * (5 + i) + 3, bad_payload)
    return sorted(items, key=lambda x: x[2])


def test_read_sqlite3_bag(tmp_path: Path):
    bag = tmp_path / "old"
    items = write_sqlite(bag)
    assert any(p.suffix == ".db3" for p in bag.iterdir())
    got = list(read_bag(bag))
    assert [(t, s) for t, _, _, s in got] == [(t, s) for t, _, s in items]  # time order, not write order
    for (_, msg, _), (_, _, rmsg, _) in zip(items, got):
        assert_msg_equal(msg, rmsg)


def test_play_bag_delivers_in_order_at_message_time(tmp_path: Path):
    bag = tmp_path / "drive"
    sent, _ = record(bag)
    runtime = LocalRuntime()
    ctx = runtime.context("listener")
    delivered = []
    for topic, msg in sample_messages():
        ctx.create_subscription(msg.__msgtype__, topic, lambda m, topic=topic: delivered.append((topic, m, ctx.now())))
    # a node that reacts to each control with a reward: the graph settles between messages
    pub = ctx.create_publisher(T.FLOAT32, TOPICS.reward)
    ctx.create_subscription(T.CONTROL, TOPICS.control, lambda m: pub.publish(ctx.new(T.FLOAT32, data=m.throttle)))
    seen = []
    counts = play_bag(bag, runtime, on_message=lambda topic, msg, ns: seen.append((topic, len(delivered))))
    assert counts == {"undecodable": 0, **{topic: 3 for topic, _ in sample_messages()}}
    assert [(t, time) for t, _, time in delivered] == [(t, pytest.approx(time)) for t, _, time in sent]
    for (_, msg, _), (_, got, _) in zip(sent, delivered):
        assert_msg_equal(msg, got)
    assert runtime.published_count[TOPICS.reward] == 3
    assert seen[0] == (TOPICS.camera, 1) and seen[-1] == (TOPICS.collision, 15)


def test_play_bag_topic_filter(tmp_path: Path):
    bag = tmp_path / "drive"
    record(bag)
    counts = play_bag(bag, LocalRuntime(), topics=[TOPICS.control])
    assert counts == {"undecodable": 0, TOPICS.control: 3}


@pytest.mark.parametrize("payload", [b"\x00\x01\x00\x00\xff\xff", b"garbage!", b""])
def test_corrupt_message_is_counted_not_fatal(tmp_path: Path, payload: bytes):
    bag = tmp_path / "bad"
    items = write_sqlite(bag, bad_payload=payload)
    runtime = LocalRuntime()
    got = []
    runtime.context("l").create_subscription(T.IMAGE, TOPICS.camera, got.append)
    counts = play_bag(bag, runtime)
    assert counts["undecodable"] == 1
    assert counts[TOPICS.camera] == 4 and len(got) == 4
    assert sum(counts.values()) == len(items) + 1
    with pytest.raises(ValueError, match="cannot decode"):
        list(read_bag(bag))


def test_truncated_image_in_mcap_is_counted(tmp_path: Path):
    store = messages.typestore()
    image = sample_messages()[0][1]
    data = bytes(store.serialize_cdr(image, T.IMAGE))
    bag = tmp_path / "cut"
    with Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(TOPICS.camera, T.IMAGE, typestore=store)
        writer.write(conn, 1, data)
        writer.write(conn, 2, data[: len(data) // 2])
        writer.write(conn, 3, data)
    counts = play_bag(bag, LocalRuntime())
    assert counts == {"undecodable": 1, TOPICS.camera: 2}


def test_unreadable_bag_is_a_bag_error_and_play_says_so(tmp_path: Path):
    """A bag rosbags cannot open (here its MCAP file emptied) is one BagError, whatever rosbags raised
    inside; `td3-drive play` turns it into a message and exit status 1, not a traceback."""
    from td3_drive.app import cli
    from td3_drive.runtime.bag import BagError

    bag = tmp_path / "bag"
    with BagRecorder(bag) as recorder:
        recorder(T.Topics().control, T.CONTROL, messages.new_message(T.CONTROL), 1.0)
    (bag / "bag.mcap").write_bytes(b"")
    with pytest.raises(BagError, match="unreadable bag"):
        list(read_bag(bag))
    with pytest.raises(SystemExit, match="td3-drive play: .*unreadable bag"):
        cli.main(["play", str(bag), "--set", "policy.backend=torch", "--set", "policy.device=cpu"])
