"""The contract between a node and whatever runs it (``runtime.ros.run_node``, the embedded graph).

A node wires itself up in ``__init__(ctx)``: the base class declares the topic
parameters every node has (``role_name``, ``namespace`` -> ``self.topics``), the
node declares its configuration dataclass with :meth:`Node.declare_config`, and it
drops bad input through ``self.drops``.  A node whose state an exact resume must restore overrides
:meth:`Node.state_dict` / :meth:`Node.load_state_dict`; one that holds files or
threads overrides :meth:`Node.close`.
"""
from __future__ import annotations

from typing import Any, TypeVar

from td3_drive.runtime.diagnostics import DropCounter
from td3_drive.runtime.interface import NodeContext, dataclass_parameters, declare_topics

Config = TypeVar("Config")


class Node:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.drops = DropCounter(ctx)
        self.topics = declare_topics(ctx)

    def declare_config(self, cls: type[Config], prefix: str = "", defaults: Config | None = None) -> Config:
        """One parameter per field of the dataclass ``cls`` (``prefix.field``), and the dataclass they make."""
        return dataclass_parameters(self.ctx, cls, prefix, defaults)

    def state_dict(self) -> dict[str, Any] | None:
        """What an exact resume restores (episode-boundary checkpoints); None: nothing."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise ValueError(f"{self.ctx.name} keeps no state to load")

    def close(self) -> None:
        """Release what the node holds (files, threads); called once, at shutdown."""
