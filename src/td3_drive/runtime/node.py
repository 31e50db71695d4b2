"""The contract between a node and whatever runs it (``runtime.ros.run_node``, the embedded graph).

A node wires itself up in ``__init__(ctx)`` and drops bad input through
``self.drops``.  A node whose state an exact resume must restore overrides
:meth:`Node.state_dict` / :meth:`Node.load_state_dict`; one that holds files or
threads overrides :meth:`Node.close`.
"""
from __future__ import annotations

from typing import Any

from td3_drive.runtime.diagnostics import DropCounter
from td3_drive.runtime.interface import NodeContext


class Node:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.drops = DropCounter(ctx)

    def state_dict(self) -> dict[str, Any] | None:
        """What an exact resume restores (episode-boundary checkpoints); None: nothing."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise ValueError(f"{self.ctx.name} keeps no state to load")

    def close(self) -> None:
        """Release what the node holds (files, threads); called once, at shutdown."""
