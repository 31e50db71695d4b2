"""Configuration dataclasses that describe themselves.

Every node's configuration is a dataclass; each field becomes one ROS 2 parameter
of the same name (``runtime.interface.dataclass_parameters``), declared with the
description given here.  Imports nothing of ours, so every layer can use it.
"""
from __future__ import annotations

import dataclasses
from typing import Any


def setting(default: Any, description: str) -> Any:
    """A dataclass field whose parameter is declared with ``description``.

    A list or dict default is copied per instance (a tuple default is shared: it cannot change).
    """
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"description": description})
    return dataclasses.field(default=default, metadata={"description": description})

