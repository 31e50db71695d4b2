"""Compact replay for pixel TD3: each frame is stored once, stacks are rebuilt at sample time.

Layout: a ring of ``capacity`` slots.  Observation number ``g`` (a global counter that
never wraps) lives in slot ``g % capacity``: its uint8 frame, its float32 kinematic state,
and the transition that *leaves* it (the action taken on seeing it, the reward received,
``terminated``/``truncated`` of that step).  The last observation of an episode therefore
has no transition (zeros there) and is never a sample start.  Two bookkeeping fields per
slot make every sample checkable without scanning: ``index`` (which ``g`` the slot holds;
written first, so a slot half-written at a crash can never pass for its old content) and
``pos`` (position in the episode; ``g - pos`` is the episode's first observation).

A transition start ``g`` is *valid* when (a) every frame its stack uses is still in the
ring, (b) it is not the last observation of its episode, and (c) its n-step window is
complete: ``n`` more observations of the same episode, or fewer ending in a termination or
truncation.  Validity is a byte per slot, updated in O(k + n) per step and rebuilt with
vectorised numpy when a buffer is loaded, so sampling is rejection sampling on that byte:
uniform over valid transitions with no Python loop per sample.

Frame stacks never cross an episode boundary: frames before the episode's first one are
replaced by that first frame, as the observation frame stack does at a reset.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from tokenize import TokenError
from typing import Any

import numpy as np
import torch
from numpy.lib.format import open_memmap

from td3_drive import topics as T

META_FILE = "replay.json"
_META_VERSION = 1
_F32_MAX = float(np.finfo(np.float32).max)


class ReplayCorrupt(ValueError):
    """Replay files on disk, or a saved replay state, that do not describe this buffer: refused whole."""


@dataclass
class Batch:
    """A sampled batch; torch tensors on the requested device."""

    obs: torch.Tensor  # uint8 (B, k, H, W)
    state: torch.Tensor  # float32 (B, state_dim)
    action: torch.Tensor  # float32 (B, action_dim)
    reward: torch.Tensor  # float32 (B, 1): r_t + g r_{t+1} + ... + g^(m-1) r_{t+m-1}
    discount: torch.Tensor  # float32 (B, 1): g^m, or 0 if the window ended in a termination
    next_obs: torch.Tensor  # uint8 (B, k, H, W): the observation m steps later
    next_state: torch.Tensor  # float32 (B, state_dim)


class ReplayBuffer:
    """Ring buffer of env steps with frame stacking and n-step returns computed at sample time.

    Args:
        capacity: number of observations kept (one slot per env step).
        frame_shape: (H, W) of one uint8 grayscale frame.
        frame_stack: frames per observation stack (k).
        state_dim: length of the float32 kinematic vector (may be 0).
        action_dim: length of the float32 action.
        n_step: rewards summed per sample (truncated early by an episode end).
        gamma: discount factor.
        directory: if given, arrays are ``.npy`` memmaps there (sparse, nothing allocated up
            front) plus ``replay.json`` written by :meth:`flush`; an existing buffer there is
            resumed as of its last flush (ReplayCorrupt if its files are not this buffer's).
        seed: seed of the sampling generator (its state is saved and restored).

    Usage: ``start_episode(frame, state)`` with the first observation, then one
    ``add(action, reward, next_frame, next_state, terminated, truncated)`` per env step;
    after ``terminated`` or ``truncated`` the next call must be ``start_episode``.  Calling
    ``start_episode`` while an episode is running ends it as truncated (it still bootstraps).
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, int] = (T.FRAME_SIZE, T.FRAME_SIZE),
        frame_stack: int = 4,
        state_dim: int = T.STATE_DIM,
        action_dim: int = 2,
        n_step: int = 1,
        gamma: float = 0.99,
        directory: str | Path | None = None,
        seed: int = 0,
    ) -> None:
        if frame_stack < 1 or n_step < 1:
            raise ValueError("frame_stack and n_step must be >= 1")
        if capacity < frame_stack + n_step + 1:
            raise ValueError(f"capacity {capacity} too small for frame_stack {frame_stack} + n_step {n_step}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.capacity = int(capacity)
        self.frame_shape = tuple(int(x) for x in frame_shape)
        self.frame_stack = int(frame_stack)
        self.state_dim = int(state_dim)
        self.action_dim = int(action_dim)
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self.directory = Path(directory) if directory is not None else None
        self._rng = np.random.default_rng(seed)
        # (dtype, per-slot shape) of everything stored; 'valid' is derived and lives in RAM
        self._specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
            "frame": (np.dtype(np.uint8), self.frame_shape),
            "state": (np.dtype(np.float32), (self.state_dim,)),
            "action": (np.dtype(np.float32), (self.action_dim,)),
            "reward": (np.dtype(np.float32), ()),
            "terminated": (np.dtype(np.bool_), ()),
            "truncated": (np.dtype(np.bool_), ()),
            "index": (np.dtype(np.int64), ()),
            "pos": (np.dtype(np.int32), ()),
        }
        self._total = 0  # observations ever written; the next one is number _total
        self._oldest = 0  # oldest observation number still in the ring
        self._in_episode = False
        self._episodes = 0
        self._num_valid = 0
        self._valid = np.zeros(self.capacity, dtype=np.uint8)  # calloc: no RAM until touched
        self._gamma_pows = self.gamma ** np.arange(self.n_step + 1, dtype=np.float64)
        if self.directory is None:
            self._arrays = {k: np.zeros((self.capacity, *shape), dtype) for k, (dtype, shape) in self._specs.items()}
        else:
            self._open_directory()

    # ------------------------------------------------------------------ storage
    def _meta_layout(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "frame_shape": list(self.frame_shape),
            "state_dim": self.state_dim,
            "action_dim": self.action_dim,
        }

    def _open_directory(self) -> None:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        meta_path = self.directory / META_FILE
        try:
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
        except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested deeper than the stack
            raise ReplayCorrupt(f"{meta_path} is not a replay buffer's metadata: {exc}") from None
        if meta is not None:
            if not isinstance(meta, dict):
                raise ReplayCorrupt(f"{meta_path} holds a {type(meta).__name__}, not a replay buffer's metadata")
            if meta.get("version") != _META_VERSION:  # another format: reading it would misread it
                raise ReplayCorrupt(f"replay buffer in {self.directory} has format version {meta.get('version')}, "
                                    f"this td3_drive reads version {_META_VERSION}: use a new run_dir or delete it")
            stored = {k: meta.get(k) for k in self._meta_layout()}
            if stored != self._meta_layout():
                raise ReplayCorrupt(
                    f"replay buffer in {self.directory} has layout {stored}, asked for {self._meta_layout()}"
                )
        self._arrays = {}
        for name, (dtype, shape) in self._specs.items():
            path = self.directory / f"{name}.npy"
            full = (self.capacity, *shape)
            if meta is None:  # fresh, or never flushed: nothing in there counts
                self._arrays[name] = open_memmap(path, mode="w+", dtype=dtype, shape=full)
                continue
            if not path.exists():
                raise ReplayCorrupt(f"replay buffer in {self.directory} is missing {path.name}")
            try:
                arr = open_memmap(path, mode="r+")
            except (ValueError, OSError, TokenError, SyntaxError) as exc:  # what numpy's header parser raises
                raise ReplayCorrupt(f"{path}: not a replay array: {exc}") from None
            if arr.shape != full or arr.dtype != dtype:
                raise ReplayCorrupt(f"{path}: has {arr.dtype}{arr.shape}, expected {dtype}{full}")
            self._arrays[name] = arr
        if meta is not None:
            self._restore_scalars(meta)
            self._recover()

    def _recover(self) -> None:
        """After reopening: drop slots overwritten after the last flush, end the open episode."""
        a = self._arrays
        g = np.arange(self._oldest, self._total, dtype=np.int64)
        stale = np.flatnonzero(a["index"][g % self.capacity] != g)
        if stale.size:
            # writes after the flush overwrite the oldest slots in order: a prefix is lost
            self._oldest = int(g[stale[-1]]) + 1
        if self._total > self._oldest:
            last = (self._total - 1) % self.capacity
            # its outgoing step may have been written after the flush: it is now the final obs
            a["action"][last] = 0.0
            a["reward"][last] = 0.0
            a["terminated"][last] = False
            a["truncated"][last] = False
        if self._in_episode:
            self._truncate_open_episode()
        self._rebuild_valid()

    def flush(self) -> None:
        """Memmap mode: write arrays to disk, then the metadata (atomically) that points at them."""
        if self.directory is None:
            return
        for arr in self._arrays.values():
            if isinstance(arr, np.memmap):
                arr.flush()
        meta = {"version": _META_VERSION, **self._meta_layout(), **self._scalars()}
        tmp = self.directory / (META_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.directory / META_FILE)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)

    @property
    def bytes_per_transition(self) -> int:
        """Bytes stored per env step, all arrays included (the RAM-only validity byte too)."""
        per_slot = sum(dtype.itemsize * math.prod(shape) for dtype, shape in self._specs.values())
        return int(per_slot + self._valid.itemsize)

    def __len__(self) -> int:
        """Number of transitions that :meth:`sample` can return right now."""
        return self._num_valid

    @property
    def written(self) -> int:
        """Observations ever written (the cursor a checkpoint records)."""
        return self._total

    # ------------------------------------------------------------------ writing
    def _check_frame(self, frame: Any) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            raise ValueError(f"frame must be a uint8 numpy array, got {getattr(frame, 'dtype', type(frame))}")
        if frame.shape != self.frame_shape:
            raise ValueError(f"frame shape {frame.shape} != {self.frame_shape}")
        return frame

    @staticmethod
    def _check_vector(name: str, value: Any, dim: int) -> np.ndarray:
        if value is None and dim == 0:
            return np.zeros(0, np.float32)
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
        if arr.shape != (dim,):
            raise ValueError(f"{name} shape {arr.shape} != ({dim},)")
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():  # checked after the cast: float64 overflow becomes inf
            raise ValueError(f"{name} has non-finite values: {arr}")
        return arr

    def _write_obs(self, frame: np.ndarray, state: np.ndarray, pos: int) -> None:
        """Write observation number _total into its slot, evicting the oldest if full."""
        t = self._total
        if t - self._oldest == self.capacity:
            self._evict_oldest()
        s, a = t % self.capacity, self._arrays
        a["index"][s] = t  # first: until the data below is complete, the slot belongs to no one old
        a["frame"][s] = frame
        a["state"][s] = state
        a["pos"][s] = pos
        a["action"][s] = 0.0
        a["reward"][s] = 0.0
        a["terminated"][s] = False
        a["truncated"][s] = False
        if self._valid[s]:  # cannot happen after eviction; kept so the count never drifts
            self._valid[s] = 0
            self._num_valid -= 1
        self._total = t + 1

    def _stack_alive(self, g: int) -> bool:
        """Are all frames of the stack at observation g still in the ring?"""
        pos = int(self._arrays["pos"][g % self.capacity])
        return g >= self._oldest and max(g - self.frame_stack + 1, g - pos) >= self._oldest

    def _evict_oldest(self) -> None:
        o = self._oldest
        self._oldest = o + 1
        # only starts within k of the evicted frame can have used it in a stack
        for g in range(o, min(o + self.frame_stack, self._total)):
            s = g % self.capacity
            if self._valid[s] and not self._stack_alive(g):
                self._valid[s] = 0
                self._num_valid -= 1

    def _mark_ready(self, first: int, last: int) -> None:
        """Starts first..last just got a complete n-step window."""
        for g in range(max(first, self._oldest), last + 1):
            s = g % self.capacity
            if not self._valid[s] and self._stack_alive(g):
                self._valid[s] = 1
                self._num_valid += 1

    def _truncate_open_episode(self) -> None:
        """End the running episode at its latest observation, as a truncation."""
        last = self._total - 1
        pos = int(self._arrays["pos"][last % self.capacity]) if last >= self._oldest else 0
        if pos >= 1 and last - 1 >= self._oldest:
            self._arrays["truncated"][(last - 1) % self.capacity] = True
            self._mark_ready(max(last - pos, last - self.n_step), last - 1)
        self._in_episode = False

    def start_episode(self, frame: np.ndarray, state: np.ndarray | None) -> None:
        """Store the first observation of an episode (ends a running one as truncated)."""
        frame = self._check_frame(frame)
        state = self._check_vector("state", state, self.state_dim)
        if self._in_episode:
            self._truncate_open_episode()
        self._write_obs(frame, state, pos=0)
        self._in_episode = True
        self._episodes += 1

    def add(
        self,
        action: np.ndarray,
        reward: float,
        next_frame: np.ndarray,
        next_state: np.ndarray | None,
        terminated: bool,
        truncated: bool,
    ) -> None:
        """Store one env step: the action taken on the latest observation and what followed."""
        if not self._in_episode:
            raise ValueError("add() needs a running episode: call start_episode() first (and after every end)")
        action = self._check_vector("action", action, self.action_dim)
        try:
            reward = float(reward)
        except (TypeError, ValueError):
            raise ValueError(f"reward must be a number, got {reward!r}") from None
        if not math.isfinite(reward) or abs(reward) > _F32_MAX:  # must survive the float32 store
            raise ValueError(f"reward is not finite: {reward}")
        next_frame = self._check_frame(next_frame)
        next_state = self._check_vector("next_state", next_state, self.state_dim)

        a, prev = self._arrays, self._total - 1
        sp = prev % self.capacity
        a["action"][sp] = action
        a["reward"][sp] = reward
        a["terminated"][sp] = bool(terminated)
        a["truncated"][sp] = bool(truncated)
        pos = int(a["pos"][sp]) + 1
        self._write_obs(next_frame, next_state, pos)
        t, n = prev + 1, self.n_step
        if terminated or truncated:
            self._in_episode = False
            self._mark_ready(max(t - pos, t - n), t - 1)  # every window reaching the end is complete
        elif pos >= n:
            self._mark_ready(t - n, t - n)

    # ------------------------------------------------------------------ sampling
    def _draw(self, batch_size: int) -> np.ndarray:
        """Observation numbers of valid starts, uniform, by rejection on the validity byte."""
        span = self._total - self._oldest
        if self._num_valid * 64 < span:  # rejection would take too many rounds: enumerate
            slots = np.flatnonzero(self._valid)
            chosen = slots[self._rng.integers(0, slots.size, size=batch_size)]
            return self._oldest + (chosen - self._oldest) % self.capacity
        out = np.empty(batch_size, dtype=np.int64)
        filled = 0
        while filled < batch_size:
            need = batch_size - filled
            # oversample by the invalid share so one round almost always suffices
            cand = self._oldest + self._rng.integers(0, span, size=int(need * span / self._num_valid * 1.1) + 8)
            ok = cand[self._valid[cand % self.capacity].view(bool)][:need]
            out[filled : filled + ok.size] = ok
            filled += ok.size
        return out

    def sample(self, batch_size: int, device: str | torch.device = "cpu") -> Batch:
        """Sample uniformly among valid transitions."""
        return batch_to(self.sample_arrays(batch_size), device)

    def sample_arrays(self, batch_size: int) -> dict[str, np.ndarray]:
        """:meth:`sample` as numpy arrays keyed by the :class:`Batch` field names."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if self._num_valid == 0:
            raise ValueError("replay buffer has no complete transition to sample yet")
        a, cap, k, n = self._arrays, self.capacity, self.frame_stack, self.n_step
        g = self._draw(batch_size)
        s = g % cap

        # n-step window: m = steps up to and including the first episode end, at most n
        win = (g[:, None] + np.arange(n)) % cap
        done = a["terminated"][win] | a["truncated"][win]
        m = np.where(done.any(axis=1), done.argmax(axis=1) + 1, n)
        weights = np.where(np.arange(n) < m[:, None], self._gamma_pows[:n], 0.0)
        reward = (a["reward"][win] * weights).sum(axis=1, dtype=np.float64)
        discount = self._gamma_pows[m] * ~a["terminated"][(g + m - 1) % cap]
        nxt = g + m

        # stacks: k frames ending at g (and at g + m), clamped to the episode's first frame
        first = (g - a["pos"][s])[:, None]
        offsets = np.arange(1 - k, 1)
        idx = np.stack([np.maximum(g[:, None] + offsets, first), np.maximum(nxt[:, None] + offsets, first)]) % cap
        frames = np.asarray(a["frame"][idx])  # one gather: (2, B, k, H, W)
        states = np.asarray(a["state"][np.stack([s, nxt % cap])])
        return {
            "obs": frames[0],
            "state": states[0],
            "action": np.asarray(a["action"][s]),
            "reward": reward[:, None].astype(np.float32),
            "discount": discount[:, None].astype(np.float32),
            "next_obs": frames[1],
            "next_state": states[1],
        }

    def _rebuild_valid(self) -> None:
        """Recompute every validity byte from the stored arrays (after a load)."""
        a, cap, n = self._arrays, self.capacity, self.n_step
        self._valid[:] = 0
        g = np.arange(self._oldest, self._total, dtype=np.int64)
        if g.size == 0:
            self._num_valid = 0
            return
        pos = a["pos"][g % cap].astype(np.int64)
        ok = np.maximum(g - self.frame_stack + 1, g - pos) >= self._oldest
        ended = np.zeros(g.size, dtype=bool)
        for o in range(n):
            # step g+o exists iff observation g+o+1 is stored and continues the same episode
            after = g + o + 1
            exists = (after < self._total) & (a["pos"][after % cap] == pos + o + 1)
            ok &= ended | exists
            step_done = a["terminated"][(g + o) % cap] | a["truncated"][(g + o) % cap]
            ended |= exists & step_done
        self._valid[g[ok] % cap] = 1
        self._num_valid = int(ok.sum())

    # ------------------------------------------------------------------ checkpoints
    def _scalars(self) -> dict[str, Any]:
        return {
            "total": self._total,
            "oldest": self._oldest,
            "in_episode": self._in_episode,
            "episodes": self._episodes,
            # PCG64 state holds 128-bit ints: a JSON string keeps every value a flat scalar
            "rng_state": json.dumps(self._rng.bit_generator.state),
        }

    def _parse_scalars(self, d: dict[str, Any]) -> tuple[int, int, bool, int, dict[str, Any]]:
        """(total, oldest, in_episode, episodes, rng state) of saved scalars; ReplayCorrupt if they do not
        describe this buffer.  Nothing is changed, so a refused state leaves the buffer as it was."""
        try:
            total, oldest, episodes, in_episode = (d[k] for k in ("total", "oldest", "episodes", "in_episode"))
            if not all(type(v) is int for v in (total, oldest, episodes)) or type(in_episode) is not bool:
                raise TypeError(f"counters {total!r}, {oldest!r}, {episodes!r}, {in_episode!r}")
            # the ring holds observations oldest..total-1: anything else is not this buffer's, and a
            # total of 2**62 would have _recover allocate an index array of that length
            if not 0 <= oldest <= total or total - oldest > self.capacity or episodes < 0:
                raise ValueError(f"observations {oldest}..{total} do not fit a ring of {self.capacity}")
            rng_state = json.loads(d["rng_state"])
            type(self._rng.bit_generator)().state = rng_state  # a probe: the setter validates it
        except (KeyError, TypeError, ValueError, RecursionError) as exc:
            raise ReplayCorrupt(f"replay scalars do not describe this buffer: {type(exc).__name__}: {exc}") from None
        return total, oldest, in_episode, episodes, rng_state

    def _restore_scalars(self, d: dict[str, Any]) -> None:
        self._total, self._oldest, self._in_episode, self._episodes, rng_state = self._parse_scalars(d)
        self._rng.bit_generator.state = rng_state

    def state_dict(self) -> dict[str, Any]:
        """Arrays (views of the used slots: save them before the next add) and JSON-able scalars."""
        used = min(self._total, self.capacity)
        arrays = {name: np.asarray(arr[:used]) for name, arr in self._arrays.items()}
        return {**arrays, **self._meta_layout(), **self._scalars()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` output (same layout required); sampling resumes exactly."""
        missing = sorted(set(self._meta_layout()) - set(d))
        if missing:
            raise ReplayCorrupt(f"replay state lacks {missing}: not a replay buffer's state")
        try:
            stored = {k: list(d[k]) if k == "frame_shape" else int(d[k]) for k in self._meta_layout()}
        except (TypeError, ValueError, OverflowError) as exc:
            raise ReplayCorrupt(f"replay state layout is not one: {exc}") from None
        if stored != self._meta_layout():
            raise ReplayCorrupt(f"replay state has layout {stored}, this buffer is {self._meta_layout()}")
        scalars = self._parse_scalars(d)  # all checked before anything is written
        used = min(scalars[0], self.capacity)
        arrays = {}
        for name, (dtype, shape) in self._specs.items():
            arr = np.asarray(d.get(name))
            if arr.shape != (used, *shape):
                raise ReplayCorrupt(f"replay state {name!r} has shape {arr.shape}, expected {(used, *shape)}")
            arrays[name] = arr
        for name, arr in arrays.items():
            self._arrays[name][:used] = arr.astype(self._specs[name][0], copy=False)
        self._restore_scalars(d)
        self._rebuild_valid()


def batch_to(arrays: dict[str, np.ndarray], device: str | torch.device = "cpu") -> Batch:
    """Numpy arrays keyed by the :class:`Batch` field names -> a Batch of tensors on ``device``."""
    return Batch(**{name: torch.from_numpy(np.ascontiguousarray(x)).to(device) for name, x in arrays.items()})


class VehicleReplay:
    """One :class:`ReplayBuffer` per vehicle stream, sampled as one buffer.

    Several vehicles interleave their steps, but a ring buffer stores episodes one after
    the other; so each vehicle writes its own ring (``capacity // streams`` slots each),
    and a batch draws from each ring in proportion to its sampleable transitions
    (uniform over all of them).  With one stream this is exactly a ReplayBuffer.

    Args:
        streams: number of vehicles.
        capacity: total observations kept, split evenly between the streams.
        directory: memmap directory; stream ``i`` of several uses ``directory/stream<i>``.
        seed: stream ``i`` samples with ``seed + i``; the split of a batch uses ``seed``.
        **kwargs: the remaining ReplayBuffer arguments.
    """

    def __init__(self, streams: int, capacity: int, directory: str | Path | None = None, seed: int = 0,
                 **kwargs: Any) -> None:
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.buffers = [
            ReplayBuffer(capacity // streams, seed=seed + i, **kwargs,
                         directory=None if directory is None
                         else Path(directory) if streams == 1 else Path(directory) / f"stream{i}")
            for i in range(streams)
        ]
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return sum(len(b) for b in self.buffers)

    def start_episode(self, stream: int, frame: np.ndarray, state: np.ndarray | None) -> None:
        self.buffers[stream].start_episode(frame, state)

    def add(self, stream: int, action: np.ndarray, reward: float, next_frame: np.ndarray,
            next_state: np.ndarray | None, terminated: bool, truncated: bool) -> None:
        self.buffers[stream].add(action, reward, next_frame, next_state, terminated, truncated)

    def sample(self, batch_size: int, device: str | torch.device = "cpu") -> Batch:
        return batch_to(self.sample_arrays(batch_size), device)

    def sample_arrays(self, batch_size: int) -> dict[str, np.ndarray]:
        if len(self.buffers) == 1:
            return self.buffers[0].sample_arrays(batch_size)
        sizes = np.array([len(b) for b in self.buffers], dtype=np.float64)
        if sizes.sum() == 0:
            raise ValueError("replay buffer has no complete transition to sample yet")
        counts = self._rng.multinomial(batch_size, sizes / sizes.sum())
        parts = [b.sample_arrays(int(c)) for b, c in zip(self.buffers, counts) if c]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def flush(self) -> None:
        for b in self.buffers:
            b.flush()

    def state_dict(self) -> dict[str, Any]:
        """One stream: ReplayBuffer.state_dict(); several: its keys prefixed ``stream<i>/``."""
        if len(self.buffers) == 1:
            return self.buffers[0].state_dict()
        out: dict[str, Any] = {"split_rng_state": json.dumps(self._rng.bit_generator.state)}
        for i, b in enumerate(self.buffers):
            out.update({f"stream{i}/{k}": v for k, v in b.state_dict().items()})
        return out

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if len(self.buffers) == 1:
            if "split_rng_state" in d:
                raise ValueError("replay state holds several vehicle streams, this replay one")
            return self.buffers[0].load_state_dict(d)
        if f"stream{len(self.buffers) - 1}/total" not in d or f"stream{len(self.buffers)}/total" in d:
            raise ValueError(f"replay state does not hold {len(self.buffers)} vehicle streams")
        for i, b in enumerate(self.buffers):
            prefix = f"stream{i}/"
            b.load_state_dict({k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)})
        self._rng.bit_generator.state = json.loads(d["split_rng_state"])
