"""The contract between a node and whatever runs it (``runtime.ros.run_node``, the embedded graph).

A node wires itself up in ``__init__(ctx)``: the base class declares the topic
parameters every node has (``role_name``, ``namespace`` -> ``self.topics``), the
node declares its configuration dataclass with :meth:`Node.declare_config`, and it
drops bad input through ``self.drops``; :meth:`Node.publish_diagnostics_every` reports those
counts and the node's :meth:`Node.status` on /diagnostics.  A node whose state an exact resume must restore overrides
:meth:`Node.state_dict` / :meth:`Node.load_state_dict`; one that holds files or
threads overrides :meth:`Node.close`.
"""
from __future__ import annotations

from typing import Any, TypeVar

from td3_drive import topics as T
from td3_drive.runtime.diagnostics import DropCounter
from td3_drive.runtime.interface import RELIABLE_QOS, NodeContext, dataclass_parameters, declare_topics, stamp

Config = TypeVar("Config")


class Node:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.drops = DropCounter(ctx)
        self.topics = declare_topics(ctx)

    def declare_config(self, cls: type[Config], prefix: str = "", defaults: Config | None = None) -> Config:
        """One parameter per field of the dataclass ``cls`` (``prefix.field``), and the dataclass they make."""
        return dataclass_parameters(self.ctx, cls, prefix, defaults)

    def status(self) -> dict[str, Any]:
        """The node's counters: on /diagnostics, and in a process's exit status (``--transport dds``)."""
        return {}

    def publish_diagnostics_every(self, period_s: float = 1.0) -> None:
        """Publish the drop counts and :meth:`status` on /diagnostics every ``period_s``."""
        publisher = self.ctx.create_publisher(T.DIAGNOSTICS, self.topics.diagnostics, RELIABLE_QOS)
        self.ctx.create_timer(period_s, lambda: publisher.publish(
            self.drops.status_message(stamp(self.ctx, self.ctx.now()), self.status())))

    def state_dict(self) -> dict[str, Any] | None:
        """What an exact resume restores (episode-boundary checkpoints); None: nothing."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise ValueError(f"{self.ctx.name} keeps no state to load")

    def close(self) -> None:
        """Release what the node holds (files, threads); called once, at shutdown."""
