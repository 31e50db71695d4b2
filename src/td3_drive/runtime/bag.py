"""rosbag2 record and playback without ROS 2, via the ``rosbags`` library.

:class:`BagRecorder` is a :meth:`LocalRuntime.add_tap` tap that writes an MCAP rosbag2
(metadata version 8, which both Humble's and Jazzy's ``ros2 bag`` read: v8 keeps QoS
profiles as a YAML string, the format Humble parses).  :func:`read_bag` reads MCAP and
sqlite3 bags; :func:`play_bag` feeds one into a :class:`LocalRuntime`, so a drive
recorded from CARLA can be replayed through the nodes deterministically.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from td3_drive.runtime import messages
from td3_drive.runtime.local import LocalRuntime

#: rosbag2 metadata version written: the newest Humble still reads (rosbags writes 8 or 9)
BAG_VERSION = 8
UNDECODABLE = "undecodable"


class BagError(ValueError):
    """A bag that cannot be read at all (metadata, storage file); a bad record is skipped and counted instead."""


class BagRecorder:
    """Record published messages to an MCAP rosbag2 directory (which must not exist yet).

    Use it as a LocalRuntime tap: ``runtime.add_tap(recorder)``.  With neither ``topics``
    nor ``prefixes`` every topic is recorded; otherwise a topic is recorded when it is in
    ``topics`` or starts with one of ``prefixes``.  Messages that arrive after
    :meth:`close` are ignored (the runtime has no way to remove a tap) and counted in
    ``dropped_after_close``.
    """

    def __init__(self, path: str | Path, topics: Iterable[str] | None = None, prefixes: Iterable[str] = (),
                 exclude: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self._exclude = frozenset(exclude)
        self._topics = None if topics is None else frozenset(topics)
        self._prefixes = tuple(prefixes)
        self._record_all = self._topics is None and not self._prefixes
        self._store = messages.typestore()
        self._writer: Writer | None = Writer(self.path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections: dict[str, Any] = {}
        self._lock = threading.Lock()  # taps may be called from several rclpy executor threads
        self.counts: dict[str, int] = {}
        self.dropped_after_close = 0

    def wants(self, topic: str) -> bool:
        """Whether ``topic`` passes the topic/prefix filter (``exclude`` always wins)."""
        if topic in self._exclude:
            return False
        if self._record_all:
            return True
        return (self._topics is not None and topic in self._topics) or topic.startswith(self._prefixes)

    def __call__(self, topic: str, type_name: str, msg: Any, time_s: float) -> None:
        """Write one message stamped ``time_s`` (seconds; stored as integer nanoseconds)."""
        if not self.wants(topic):
            return
        type_name = messages.normalize_type_name(type_name)
        data = self._store.serialize_cdr(msg, type_name)  # outside the lock: the slow part
        with self._lock:
            if self._writer is None:
                self.dropped_after_close += 1
                return
            conn = self._connections.get(topic)
            if conn is None:
                conn = self._writer.add_connection(topic, type_name, typestore=self._store)
                self._connections[topic] = conn
            elif conn.msgtype != type_name:
                raise TypeError(f"{topic} was recorded as {conn.msgtype}, got {type_name}")
            self._writer.write(conn, int(round(time_s * 1e9)), data)
            self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> None:
        """Finish the MCAP file and write metadata.yaml (idempotent)."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def __enter__(self) -> BagRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raw_messages(path: str | Path, topics: Iterable[str] | None) -> Iterator[tuple[str, str, bytes, int]]:
    """(topic, type name, CDR bytes, timestamp ns) in time order, MCAP or sqlite3."""
    wanted = None if topics is None else set(topics)
    try:
        with Reader(Path(path)) as reader:
            conns = [c for c in reader.connections if wanted is None or c.topic in wanted]
            if not conns:  # an empty filter would mean "all" to rosbags
                return
            for conn, timestamp, data in reader.messages(connections=conns):
                yield conn.topic, conn.msgtype, data, timestamp
    except Exception as exc:  # noqa: BLE001  rosbags' readers raise ReaderError, but also whatever a corrupt
        # index hits (UnicodeDecodeError, struct.error, KeyError, ...): the bag is unusable either way.  MemoryError
        # too: the MCAP reader reads a length field's worth of bytes in one read(), which CPython allocates whole
        # up front, so a corrupt length of 2**57 fails that allocation at once (nothing is held; a length it can
        # allocate comes back as the bytes the file has)
        raise BagError(f"{path}: unreadable bag: {type(exc).__name__}: {exc}") from exc


def read_bag(path: str | Path, topics: Iterable[str] | None = None) -> Iterator[tuple[str, str, Any, int]]:
    """Yield (topic, type name, message, timestamp ns) in time order.

    Raises ValueError on a message that does not deserialize (use :func:`play_bag` to skip those).
    """
    store = messages.typestore()
    for topic, type_name, data, timestamp in _raw_messages(path, topics):
        try:
            msg = store.deserialize_cdr(data, type_name)
        except Exception as exc:  # rosbags raises several types for bad CDR
            raise ValueError(f"{path}: cannot decode {type_name} on {topic} at {timestamp} ns: {exc}") from exc
        yield topic, type_name, msg, timestamp


def play_bag(
    path: str | Path,
    runtime: LocalRuntime,
    topics: Iterable[str] | None = None,
    on_message: Callable[[str, Any, int], None] | None = None,
) -> dict[str, int]:
    """Publish a bag's messages into ``runtime`` in time order and spin after each.

    ``runtime.time_s`` is set to each message's time before it is published (the bag is
    the clock: timers are not fired).  ``on_message(topic, msg, timestamp_ns)`` runs after
    the graph has settled on that message.  Returns message counts per topic plus
    ``'undecodable'``: messages that failed to deserialize and were skipped.
    """
    store = messages.typestore()
    counts: dict[str, int] = {UNDECODABLE: 0}
    for topic, type_name, data, timestamp in _raw_messages(path, topics):
        try:
            msg = store.deserialize_cdr(data, type_name)
        except Exception:  # corrupt or unknown: a bad record must not end a long replay
            counts[UNDECODABLE] += 1
            continue
        runtime.time_s = timestamp * 1e-9
        runtime.publish(topic, msg)
        runtime.spin()
        counts[topic] = counts.get(topic, 0) + 1
        if on_message is not None:
            on_message(topic, msg, timestamp)
    return counts
