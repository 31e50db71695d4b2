"""DDS types for our ROS 2 messages, generated from the definitions we already have.

A ROS 2 node on rmw_cyclonedds_cpp (humble) names the DDS type of ``sensor_msgs/msg/Image``
``sensor_msgs::msg::dds_::Image_`` (``create_type_name`` in ``src/serdata.cpp`` and
``src/MessageTypeSupport_impl.hpp``) and sends it as keyless XCDR1 (``serdata.cpp``:
``allowed_data_representation = DDS_DATA_REPRESENTATION_FLAG_XCDR1``).  The classes here are
built once per type, at first use, from the rosbags typestore (ROS 2 humble plus our
carla_msgs, :mod:`td3_drive.runtime.messages`); nothing is written by hand per type.

Nodes see rosbags messages on every runtime, and rosbags' CDR is what goes on the wire both
ways: writers hand Cyclone ``serialize_cdr`` (``dds.wire_payload``), readers take the received
bytes and ``deserialize_cdr`` them in place (``dds.from_wire``).  The classes here give Cyclone
the type's name and description; ``test_dds`` checks, for every type the stack uses, that
rosbags' CDR is byte for byte what Cyclone's own serializer makes of :func:`to_dds` of the message.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np
from cyclonedds.idl import IdlStruct, make_idl_struct
from cyclonedds.idl import types as idl
from cyclonedds.idl._machinery import BytesMachine
from rosbags.typesys.base import Nodetype

from td3_drive.runtime import messages

_BYTES = ("uint8", "byte", "char")  # ROS 2 byte and char are both octets on the wire
_IDL_BASE: dict[str, Any] = {
    "bool": bool, "int8": idl.int8, "uint8": idl.uint8, "byte": idl.uint8, "char": idl.uint8,
    "int16": idl.int16, "uint16": idl.uint16, "int32": idl.int32, "uint32": idl.uint32,
    "int64": idl.int64, "uint64": idl.uint64, "float32": idl.float32, "float64": idl.float64,
}
_BYTE_SEQUENCE = idl.sequence[idl.uint8]
Convert = Callable[[Any], Any]


def dds_type_name(type_name: str) -> str:
    """'sensor_msgs/msg/Image' -> 'sensor_msgs::msg::dds_::Image_' (what rmw_cyclonedds_cpp registers)."""
    package, sub, name = messages.normalize_type_name(type_name).split("/")
    return f"{package}::{sub}::dds_::{name}_"


def ros_type_name(dds_name: str) -> str:
    """'sensor_msgs::msg::dds_::Image_' -> 'sensor_msgs/msg/Image' (the inverse of :func:`dds_type_name`)."""
    parts = dds_name.split("::")
    if len(parts) != 4 or parts[2] != "dds_" or not parts[3].endswith("_"):
        raise ValueError(f"not a ROS 2 DDS type name: {dds_name!r}")
    return f"{parts[0]}/{parts[1]}/{parts[3][:-1]}"


def dds_topic_name(topic: str) -> str:
    """'/carla/ego_vehicle/rgb_front/image' -> 'rt/carla/ego_vehicle/rgb_front/image'.

    ROS 2 design, "Topic and Service name mapping to DDS": a ROS topic is the DDS topic ``rt``
    + its fully qualified name (rmw_cyclonedds_cpp: ``ROS_TOPIC_PREFIX`` in
    ``src/namespace_prefix.hpp``, joined in ``make_fqtopic``).  Names must be absolute here:
    our nodes build them from their namespace parameter (:class:`td3_drive.topics.Topics`).
    """
    if not topic.startswith("/") or topic.endswith("/") or "//" in topic:
        raise ValueError(f"a ROS 2 topic name must be absolute, like /a/b: {topic!r}")
    return "rt" + topic


def _fields(type_name: str, distro: str = "humble") -> list[tuple[str, tuple]]:
    return list(messages.typestore(distro).fielddefs[type_name][1])


@functools.lru_cache(maxsize=None)
def idl_class(type_name: str, distro: str = "humble") -> type[IdlStruct]:
    """The Cyclone DDS class of a ROS 2 message type, generated from its definition (in ``distro``)."""
    name = messages.normalize_type_name(type_name)
    fields = {field: _idl_field(node, distro) for field, node in _fields(name, distro)}
    cls = make_idl_struct(name.rsplit("/", 1)[-1] + "_", dds_type_name(name), fields)
    # uint8[] is declared sequence<uint8> (what the type information says) but serialized as bytes:
    # the same CDR as Cyclone's per-element loop, without the loop (7 MB of actor weights)
    cls.__idl__.populate()
    byte_fields = [field for field, annotation in fields.items() if annotation is _BYTE_SEQUENCE]
    for machine in (cls.__idl__.v1_machine, cls.__idl__.v2_machine):
        for field in byte_fields:
            machine.members_machines[field] = BytesMachine()
    return cls


def _idl_field(node: tuple, distro: str = "humble") -> Any:
    kind, detail = node
    if kind == Nodetype.BASE:
        base, bound = detail
        if base == "string":
            return idl.bounded_str[bound] if bound else str
        return _IDL_BASE[base]
    if kind == Nodetype.NAME:
        return idl_class(detail, distro)
    element, length = detail
    if element[0] == Nodetype.BASE and element[1][0] in _BYTES:
        return idl.array[idl.uint8, length] if kind == Nodetype.ARRAY else _BYTE_SEQUENCE
    inner = _idl_field(element, distro)
    if kind == Nodetype.ARRAY:
        return idl.array[inner, length]
    return idl.sequence[inner, length] if length else idl.sequence[inner]


# --------------------------------------------------------------------------- rosbags -> DDS
def to_dds(msg: Any, type_name: str | None = None) -> IdlStruct:
    """A rosbags message (what nodes build with ``ctx.new``) -> its DDS sample: what Cyclone's own
    ``DataWriter.write`` takes.  The runtime sends rosbags' CDR instead (``dds.wire_payload``, faster);
    ``test_dds`` checks that both are the same bytes."""
    return _converter(messages.normalize_type_name(type_name or msg.__msgtype__))(msg)


@functools.lru_cache(maxsize=None)
def _converter(type_name: str) -> Convert:
    """Field by field, into the DDS class."""
    cls = idl_class(type_name)
    converters = [(field, _field_converter(node)) for field, node in _fields(type_name)]
    return lambda msg: cls(**{field: convert(getattr(msg, field)) for field, convert in converters})


def _field_converter(node: tuple) -> Convert:
    kind, detail = node
    if kind == Nodetype.BASE:
        base = detail[0]  # numpy scalars -> the Python types Cyclone's serializer checks for
        return str if base == "string" else bool if base == "bool" else float if base.startswith("float") else int
    if kind == Nodetype.NAME:
        return _converter(detail)
    element, _ = detail
    if element[0] == Nodetype.BASE:
        base = element[1][0]
        if base == "string":
            return list
        if base in _BYTES:
            return lambda value: np.ascontiguousarray(value, dtype=np.uint8).tobytes()
        dtype = messages.numpy_dtype(base)
        return lambda value: np.asarray(value, dtype=dtype).tolist()
    convert = _field_converter(element)
    return lambda value: [convert(item) for item in value]
