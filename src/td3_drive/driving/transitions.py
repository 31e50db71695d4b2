"""Stamped observations + stamped actions -> transitions, in stamp order, whatever the arrival order.

Under ROS 2 the observation at t+1 and the control for t travel on different topics
from different nodes, so the trainer may see them in either order (and a
multi-threaded executor may run their callbacks in either order).  The assembler
keeps the actions it was given by stamp and holds observations that are ahead of
the chain until the action for the observation before them arrives, so a late
control is still paired with the observation it was computed from.

Two waits end early: an action the caller reports as lost (``action_lost``, e.g. an
invalid control was dropped), and an action still missing when ``max_held``
observations wait behind it.  Either way the chain restarts at the next observation
(a :class:`Restart`), and no transition ever pairs an observation with another
stamp's action.  ``world_ready(stamp)`` lets the caller also wait for what the
reward needs at t+1 (the pose stamped t+1); it is bypassed once ``max_held`` is
reached so a missing pose cannot stall training.

An observation that never arrives (a camera frame lost on a best-effort topic, or
overwritten in a reader's queue while the trainer was busy) would make the next one look
like the successor of the one before: with ``max_gap`` (the tick period and a half) a step
longer than that is a ``lost_observation`` restart instead, never a two-tick transition.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

__all__ = ["Observation", "Step", "Restart", "TransitionAssembler"]


@dataclass(frozen=True)
class Observation:
    """What the replay stores of one observation: the newest frame and the kinematic state."""

    stamp: float
    frame: np.ndarray
    state: np.ndarray


@dataclass(frozen=True)
class Step:
    """A complete transition: ``action`` was taken on seeing ``observation``; ``next`` followed."""

    observation: Observation
    action: np.ndarray
    next: Observation


@dataclass(frozen=True)
class Restart:
    """The chain broke before ``observation`` (the action for the one before never came)."""

    observation: Observation
    reason: str


Outcome = Union[Step, Restart]


class TransitionAssembler:
    """One vehicle's chain: ``start(obs)`` at an episode start, then feed observations and actions.

    Args:
        max_held: observations held behind a missing action (or a world not ready) before
            giving up on it; 1 tolerates a control that arrives after the next observation.
        world_ready: ``world_ready(stamp)`` is true once what the step into ``stamp`` needs
            (pose, events) has arrived; defaults to always.
        max_actions: actions kept for future stamps (bounded against stamp garbage).
        max_gap: longest step in seconds; a longer one lost an observation in between (None: no limit).
    """

    def __init__(self, max_held: int = 2, world_ready: Callable[[float], bool] | None = None,
                 max_actions: int = 64, max_gap: float | None = None) -> None:
        if max_held < 1:
            raise ValueError(f"max_held must be >= 1, got {max_held}")
        self.max_held = int(max_held)
        self.max_actions = int(max_actions)
        self.max_gap = max_gap
        self.world_ready = world_ready or (lambda stamp: True)
        self._current: Observation | None = None  # the observation whose action is awaited
        self._held: list[Observation] = []  # later observations, in stamp order
        self._actions: dict[float, np.ndarray] = {}
        self._lost: set[float] = set()

    @property
    def current_stamp(self) -> float | None:
        return None if self._current is None else self._current.stamp

    @property
    def held(self) -> int:
        return len(self._held)

    def start(self, first: Observation) -> list[Outcome]:
        """Begin a chain at ``first`` (an episode start); held observations and older actions are dropped.

        An action for ``first`` that arrived before it is kept (returns what completes, normally nothing).
        """
        self._current, self._held = first, []
        self._forget_before(first.stamp)
        return self.poll()

    def stop(self) -> None:
        """End the chain (episode over).  Actions stay: the next episode's first one may arrive early."""
        self._current, self._held = None, []

    def add_observation(self, obs: Observation) -> list[Outcome]:
        """An observation newer than every one given before (the pairer guarantees the order)."""
        if self._current is None:
            return []
        self._held.append(obs)
        return self.poll()

    def add_action(self, stamp: float, action: np.ndarray) -> tuple[list[Outcome], str]:
        """The action taken at ``stamp``.  Returns (outcomes, drop reason or "" if kept or ignored)."""
        if self._current is not None and stamp < self._current.stamp:
            return [], ""  # for an observation before the chain (or the episode): not ours to keep
        if stamp in self._actions or stamp in self._lost:
            return [], "duplicate_control"
        self._actions[stamp] = action
        if len(self._actions) > self.max_actions:
            # in a chain keep the stamps nearest it (far-future ones are garbage); between episodes
            # keep the newest (the next episode's first action is among them)
            del self._actions[max(self._actions) if self._current is not None else min(self._actions)]
        return self.poll(), ""

    def action_lost(self, stamp: float) -> list[Outcome]:
        """The action for ``stamp`` will never come (its control was invalid): do not wait for it."""
        if (self._current is None or stamp >= self._current.stamp) and stamp not in self._actions:
            self._lost.add(stamp)
            if len(self._lost) > self.max_actions:  # bounded like the actions: far-future stamps go first
                self._lost.remove(max(self._lost))
        return self.poll()

    def poll(self) -> list[Outcome]:
        """Complete whatever can be completed now (call again when the world catches up)."""
        out: list[Outcome] = []
        while self._current is not None and self._held:
            current, nxt = self._current, self._held[0]
            give_up = len(self._held) > self.max_held
            if current.stamp in self._lost:
                out.append(self._restart("missing_action"))
            elif self.max_gap is not None and nxt.stamp - current.stamp > self.max_gap:
                out.append(self._restart("lost_observation"))
            elif current.stamp in self._actions:
                if not (give_up or self.world_ready(nxt.stamp)):
                    break
                out.append(Step(current, self._actions.pop(current.stamp), nxt))
                self._advance()
            elif give_up:
                out.append(self._restart("missing_action"))
            else:
                break
        return out

    def _advance(self) -> None:
        self._current = self._held.pop(0)
        self._forget_before(self._current.stamp)

    def _restart(self, reason: str) -> Restart:
        self._advance()
        assert self._current is not None
        return Restart(self._current, reason)

    def _forget_before(self, stamp: float) -> None:
        self._actions = {s: a for s, a in self._actions.items() if s >= stamp}
        self._lost = {s for s in self._lost if s >= stamp}
