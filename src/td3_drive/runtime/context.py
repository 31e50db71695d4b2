"""What the in-process and the DDS runtimes share: a node context's parameters, logger and
messages, and periodic timers on a clock they advance themselves (rclpy brings its own)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from td3_drive.runtime import messages
from td3_drive.runtime.parameters import for_node, typed_value


class ContextBase:
    """The runtime-independent half of a NodeContext: parameters as rclpy reads a file, logging, messages."""

    def __init__(self, name: str, parameters: dict[str, dict[str, Any]]) -> None:
        self.name = name
        self._given = for_node(parameters, name)  # matched as rclpy matches a file
        self.declared: dict[str, tuple[Any, str]] = {}
        self._logger = logging.getLogger(f"td3_drive.{name}")

    def parameter(self, name: str, default: Any, description: str = "") -> Any:
        self.declared[name] = (default, description)
        return typed_value(self.name, name, default, self._given.get(name, default))

    def undeclared_parameters(self) -> list[str]:
        """Parameters given in the config that this node never declared (config typos)."""
        return sorted(set(self._given) - set(self.declared) - {"use_sim_time"})

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    def new(self, type_name: str, **fields: Any) -> Any:
        return messages.new_message(type_name, **fields)


@dataclass
class Timer:
    """A callback every ``period_s`` of its clock (sim time, or with ``wall`` the monotonic clock)."""

    period_s: float
    callback: Callable[[], None]
    next_s: float
    wall: bool = False
    #: missed periods caught up one by one; beyond that (a clock jump, e.g. a bag stamped in wall
    #: time) the timer skips ahead, so a jump of years does not mean billions of callbacks
    MAX_CATCH_UP: ClassVar[int] = 100

    def __post_init__(self) -> None:
        if self.period_s <= 0:
            raise ValueError("timer period must be positive")

    def fire_due(self, now: float) -> None:
        """Call back once per period that ``now`` has passed."""
        missed = (now - self.next_s) / self.period_s
        if self.wall and missed > 1:  # a wall timer does not burst after a long callback
            self.next_s += int(missed) * self.period_s
        elif missed > self.MAX_CATCH_UP:
            self.next_s += (int(missed) - self.MAX_CATCH_UP) * self.period_s
        while self.next_s <= now + 1e-12:
            self.next_s += self.period_s
            self.callback()
