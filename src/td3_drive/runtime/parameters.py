"""Which entries of a ROS 2 parameter file a node reads, decided as rclpy decides it.

rclpy (humble, ``rclpy/src/rclpy/node.cpp``, ``_populate_node_parameters_from_rcl_params``)
prefixes a YAML node key with ``/`` when it has none, turns ``/*`` into ``(/\\w+)`` (so
``/**`` becomes ``(/\\w+)*``) and keeps the entry only if that regex matches the node's
fully qualified name.  So ``policy:`` reaches ``/policy`` but not ``/v0/policy``, and
``/**/policy:`` reaches both.  Later matching entries override earlier ones.

Inside td3_drive a parameter dictionary is keyed the same way, with one shorthand: a bare
node name (``"policy"``) stands for ``/**/policy``, the form every file in config/ uses.
"""
from __future__ import annotations

import re
from typing import Any

class ParameterFileError(ValueError):
    """A parameter file that is not one: not YAML, or not ``node: {ros__parameters: {...}}``."""


class ParameterTypeError(TypeError):
    """A parameter value of another type than the parameter's (rclpy: InvalidParameterTypeException)."""


#: the wildcard prefix our parameter files put before every node name
ANY_NAMESPACE = "/**/"


def internal_key(yaml_key: str) -> str:
    """A YAML node key as td3_drive keys it: ``/**/policy`` -> ``policy``; anything else stays a
    fully qualified pattern with its leading ``/`` (``policy`` -> ``/policy``, as rclpy reads it)."""
    key = str(yaml_key)
    name = key[len(ANY_NAMESPACE):]
    if key.startswith(ANY_NAMESPACE) and name and not {"*", "/"} & set(name):
        return name
    return key if key.startswith("/") else "/" + key


def yaml_key(key: str) -> str:
    """The inverse of :func:`internal_key`: what a parameter file written by us says."""
    return key if key.startswith("/") else ANY_NAMESPACE + key


def matches(key: str, fully_qualified_name: str) -> bool:
    """Whether the entry ``key`` (internal form) applies to the node ``fully_qualified_name``."""
    pattern = re.escape(yaml_key(key)).replace(r"/\*", r"(/\w+)").replace(r"\*", "*")
    try:
        return re.fullmatch(pattern, fully_qualified_name) is not None
    except re.error as exc:  # a '*' with nothing to repeat ('a**'): no node name pattern, a broken file
        raise ParameterFileError(f"node key {key!r} is not a node name pattern: {exc}") from None


def for_node(parameters: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    """The parameters the node ``name`` (``policy``, ``v0/policy``) reads: every matching entry, in order."""
    fqn = "/" + name.strip("/")
    merged: dict[str, Any] = {}
    for key, values in parameters.items():
        if matches(key, fqn):
            merged.update(values)
    return merged


def typed_value(node: str, name: str, default: Any, value: Any) -> Any:
    """``value`` given for the parameter ``name`` (typed by ``default``), as a node declares it: an
    int for a float parameter is read as a float (YAML ``1`` for ``1.0``), an array is typed by its
    elements as rclpy types it (ints in a float array likewise), a bool is no int; any other mismatch
    is a ParameterTypeError."""
    if default is None or value is None:
        return value
    if isinstance(default, float) and type(value) is int:
        return float(value)
    if not isinstance(value, type(default)) or isinstance(value, bool) != isinstance(default, bool):
        raise ParameterTypeError(f"{node}: parameter {name!r} must be {type(default).__name__}, got {value!r}")
    if isinstance(default, list) and default:  # an empty default names no element type
        element = type(default[0])
        items = [float(v) if element is float and type(v) is int else v for v in value]
        if not all(type(v) is element for v in items):
            raise ParameterTypeError(f"{node}: parameter {name!r} must be an array of {element.__name__}, "
                                     f"got {value!r}")
        return items
    return value
