"""ROS 2 message types without ROS 2: the rosbags typestore plus carla_msgs.

The embedded runtime, the bag writer and the tests all use these classes, so
what we test is the wire contract itself (same type names, same field names,
CDR serialisation identical to what a ROS 2 node sends).  carla_msgs is
registered at import from the ``.msg`` definitions shipped in ``td3_drive/msg``.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.base import Nodetype

from td3_drive.runtime.interface import split_seconds

MSG_DIR = Path(__file__).resolve().parent.parent / "msg"

_NUMPY_DTYPES = {
    "bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8, "uint8": np.uint8,
    "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
    "int64": np.int64, "uint64": np.uint64, "float32": np.float32, "float64": np.float64,
}


def numpy_dtype(base_type: str) -> type:
    """The numpy dtype rosbags uses for an array of the ROS base type ``base_type`` ('float32')."""
    return _NUMPY_DTYPES[base_type]


def normalize_type_name(type_name: str) -> str:
    """'sensor_msgs/Image' or 'sensor_msgs/msg/Image' -> 'sensor_msgs/msg/Image'."""
    parts = type_name.strip("/").split("/")
    if len(parts) == 2:
        return f"{parts[0]}/msg/{parts[1]}"
    if len(parts) == 3:
        return "/".join(parts)
    raise ValueError(f"not a ROS 2 message type name: {type_name!r}")


#: the rosbags typestore of each ROS 2 distribution the DDS runtime can join (``dds.graph_distro``)
DISTRO_STORES = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}


@functools.lru_cache(maxsize=len(DISTRO_STORES))
def typestore(distro: str = "humble"):
    """The ROS 2 typestore with carla_msgs registered: Humble's, which every runtime uses, or another
    distribution's for the few types that differ on its wire (Jazzy: ``rmw_dds_common/msg/Gid``)."""
    store = get_typestore(DISTRO_STORES[distro])
    types: dict = {}
    for path in sorted(MSG_DIR.glob("*/*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"{path.parent.name}/msg/{path.stem}"))
    store.register(types)
    return store


def message_class(type_name: str) -> type:
    name = normalize_type_name(type_name)
    try:
        return typestore().types[name]
    except KeyError:
        raise KeyError(f"unknown message type {name!r}") from None


def _default(node: tuple) -> Any:
    kind, detail = node
    if kind == Nodetype.BASE:
        base = detail[0]
        if base == "string":
            return ""
        if base == "bool":
            return False
        return 0.0 if base.startswith("float") else 0
    if kind == Nodetype.NAME:
        return new_message(detail)
    if kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
        element, length = detail
        count = length if kind == Nodetype.ARRAY else 0
        if element[0] == Nodetype.BASE and element[1][0] in _NUMPY_DTYPES:
            return np.zeros(count, dtype=_NUMPY_DTYPES[element[1][0]])
        return [_default(element) for _ in range(count)]
    raise TypeError(f"unsupported field node {node!r}")


@functools.lru_cache(maxsize=None)
def _layout(type_name: str) -> tuple[str, type, tuple, frozenset]:
    name = normalize_type_name(type_name)
    field_defs = tuple(typestore().fielddefs[name][1])
    return name, message_class(name), field_defs, frozenset(f for f, _ in field_defs)


def new_message(type_name: str, **fields: Any) -> Any:
    """Build a message with every field not given set to its ROS default (0, '', empty)."""
    name, cls, field_defs, known = _layout(type_name)
    if not known.issuperset(fields):
        raise TypeError(f"{name} has no field(s) {sorted(set(fields) - known)}")
    return cls(**{f: fields[f] if f in fields else _default(node) for f, node in field_defs})


def type_name_of(msg: Any) -> str:
    return msg.__msgtype__


def serialize(msg: Any, type_name: str | None = None) -> bytes:
    return bytes(typestore().serialize_cdr(msg, type_name or type_name_of(msg)))


def deserialize(data: bytes, type_name: str) -> Any:
    return typestore().deserialize_cdr(data, normalize_type_name(type_name))


def stamp(seconds: float) -> Any:
    """builtin_interfaces/Time for a time in seconds."""
    sec, nanosec = split_seconds(seconds)
    return new_message("builtin_interfaces/msg/Time", sec=sec, nanosec=nanosec)


def seconds(time_msg: Any) -> float:
    """builtin_interfaces/Time (rosbags or rclpy) -> seconds."""
    return float(time_msg.sec) + float(time_msg.nanosec) * 1e-9
