"""Dropped-input accounting shared by every node: a counter per reason, rate-limited logs.

Bad input never crashes a node and never passes silently: it is dropped, counted
under a short reason, logged on the 1st, 2nd, 4th, 8th ... occurrence, and the
counts are published on /diagnostics (diagnostic_msgs/DiagnosticArray).
"""
from __future__ import annotations

import threading
from typing import Any

from td3_drive import topics as T
from td3_drive.runtime.interface import NodeContext


def worth_logging(count: int) -> bool:
    """Log the 1st, 2nd, 4th, 8th ... occurrence: loud at first, quiet when it persists."""
    return count & (count - 1) == 0


class DropCounter:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.counts: dict[str, int] = {}
        # the trainer counts from its learner thread and from callbacks of several groups at once;
        # an unguarded read-modify-write loses counts there
        self._lock = threading.Lock()

    def count(self, reason: str) -> int:
        """Count one drop without logging (for a node that logs it its own way); returns the new count."""
        with self._lock:
            count = self.counts[reason] = self.counts.get(reason, 0) + 1
        return count

    def drop(self, reason: str, detail: str = "") -> None:
        count = self.count(reason)
        if worth_logging(count):
            self.ctx.logger.warning(f"{self.ctx.name}: dropped input ({reason}) x{count} {detail}".rstrip())

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def status_message(self, stamp: Any, extra: dict[str, Any] | None = None) -> Any:
        """A DiagnosticArray with one status for this node: level WARN when anything was dropped."""
        ctx = self.ctx
        with self._lock:
            counts = dict(self.counts)
        values = [ctx.new("diagnostic_msgs/msg/KeyValue", key=f"dropped/{k}", value=str(v))
                  for k, v in sorted(counts.items())]
        values += [ctx.new("diagnostic_msgs/msg/KeyValue", key=k, value=str(v)) for k, v in (extra or {}).items()]
        status = ctx.new(
            "diagnostic_msgs/msg/DiagnosticStatus", level=1 if counts else 0,  # WARN / OK (the rclpy adapter converts byte fields)
            name=f"td3_drive/{ctx.name}", message=f"{sum(counts.values())} inputs dropped" if counts else "ok",
            hardware_id="", values=values)
        return ctx.new(T.DIAGNOSTICS, header=ctx.new(T.HEADER, stamp=stamp), status=[status])
