"""Checkpoints: safetensors for every tensor, JSON for counters, config and RNG.

Layout of ``<run_dir>/checkpoints``::

    step_000001000/
        model.safetensors    every network of the learner, prefixed by its name
        optim.safetensors    optimizer state tensors (Adam moments and steps) + RNG tensors
        actor.safetensors    the deployable actor, same bytes as published on /td3/actor_weights
        replay.safetensors   optional: the replay buffer's arrays
        state.json           counters, configs, optimizer param groups, RNG states, file checksums
    latest                   name of the newest complete checkpoint

A checkpoint is written into a temporary directory, every file fsync'ed, then
renamed into place: a crash at any moment leaves either the previous complete
checkpoint or the new one, never a partial one.  Loading verifies checksums and
falls back to the newest checkpoint that verifies.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy_file
from safetensors.numpy import save_file as save_numpy_file
from safetensors.torch import load_file as load_torch_file
from safetensors.torch import save_file as save_torch_file

from td3_drive.rl import weights
from td3_drive.rl.learner import Learner

log = logging.getLogger(__name__)
LATEST = "latest"


class CheckpointError(RuntimeError):
    pass


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------ learner <-> tensors
def learner_state(learner: Learner) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(model tensors, optimizer + RNG tensors, JSON-able state) of a learner."""
    model = {f"{name}.{k}": v.detach().cpu().contiguous()
             for name, module in learner.modules().items() for k, v in module.state_dict().items()}
    optim: dict[str, torch.Tensor] = {}
    groups: dict[str, Any] = {}
    for name, optimizer in learner.optimizers().items():
        sd = optimizer.state_dict()
        for idx, state in sd["state"].items():
            for key, value in state.items():
                optim[f"{name}.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        groups[name] = sd["param_groups"]
    optim["rng.learner"] = learner.generator.get_state()
    optim["rng.torch"] = torch.get_rng_state()
    meta = {
        "learner_config": learner.config.to_dict(),
        "num_updates": learner.num_updates,
        "num_actor_updates": learner.num_actor_updates,
        "health": {"skipped": learner.health.skipped, "consecutive_bad": learner.health.consecutive_bad},
        "param_groups": groups,
    }
    return model, optim, meta


def _counter(meta: dict[str, Any], key: str) -> int:
    value = meta[key]
    if type(value) is not int or value < 0:  # a float or a string would surface updates later, far from here
        raise CheckpointError(f"checkpoint counter {key} is {value!r}, not a count")
    return value


def restore_learner(learner: Learner, model: dict[str, torch.Tensor], optim: dict[str, torch.Tensor],
                    meta: dict[str, Any]) -> None:
    if meta["learner_config"] != learner.config.to_dict():
        raise CheckpointError(f"checkpoint learner config {meta['learner_config']} differs from {learner.config.to_dict()}")
    for name, module in learner.modules().items():
        prefix = f"{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}, strict=True)
    for name, optimizer in learner.optimizers().items():
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in optim.items():
            opt, _, rest = key.partition(".")
            if opt == name:
                idx, _, field = rest.partition(".")
                state.setdefault(int(idx), {})[field] = value
        groups = meta["param_groups"][name]
        for group in groups:
            if "betas" in group:
                group["betas"] = tuple(group["betas"])
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    learner.generator.set_state(optim["rng.learner"])
    torch.set_rng_state(optim["rng.torch"])
    learner.num_updates = _counter(meta, "num_updates")
    learner.num_actor_updates = _counter(meta, "num_actor_updates")
    learner.health.skipped = dict(meta["health"]["skipped"])
    learner.health.consecutive_bad = _counter(meta["health"], "consecutive_bad")


# ------------------------------------------------------------ on disk
@dataclass
class Checkpoint:
    path: Path
    state: dict[str, Any]  # the JSON part: counters, configs, RNG, caller's own state
    model: dict[str, torch.Tensor]
    optim: dict[str, torch.Tensor]
    replay_arrays: dict[str, np.ndarray] | None


class Checkpointer:
    """Atomic save, verified load, ``keep`` newest checkpoints retained."""

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def save(self, step: int, learner: Learner, state: dict[str, Any] | None = None,
             replay_state: dict[str, Any] | None = None) -> Path:
        """Write checkpoint ``step``.  ``state``: the caller's JSON-able state (counters, RNG, config)."""
        if not learner.parameters_finite():
            raise CheckpointError("refusing to checkpoint non-finite weights")
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"step_{step:012d}"
        final = self.directory / name
        tmp = self.directory / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model, optim, meta = learner_state(learner)
        save_torch_file(model, tmp / "model.safetensors")
        save_torch_file(optim, tmp / "optim.safetensors")
        actor_bytes = weights.encode_actor(learner.actor(), learner.num_updates, learner.config.actor_architecture())
        (tmp / "actor.safetensors").write_bytes(actor_bytes)
        payload = {"step": step, "learner": meta, "state": state or {}}
        if replay_state is not None:
            arrays = {k: np.ascontiguousarray(v) for k, v in replay_state.items() if isinstance(v, np.ndarray)}
            save_numpy_file(arrays, str(tmp / "replay.safetensors"))
            payload["replay"] = {k: v for k, v in replay_state.items() if not isinstance(v, np.ndarray)}
        payload["checksums"] = {p.name: _sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / "state.json").write_text(json.dumps(payload, indent=1))
        for path in tmp.iterdir():
            fsync_path(path)
        fsync_path(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(self.directory)
        atomic_write_bytes(self.directory / LATEST, name.encode())
        self._prune()
        return final

    def _prune(self) -> None:
        complete = self.list()
        for old in complete[: max(0, len(complete) - self.keep)]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.directory.glob(".step_*.tmp-*"):  # left by a crash mid-save
            shutil.rmtree(stale, ignore_errors=True)

    def list(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("step_*") if p.is_dir() and (p / "state.json").exists())

    def verify(self, path: Path) -> bool:
        try:
            payload = json.loads((path / "state.json").read_text())
        except (OSError, ValueError, RecursionError):  # RecursionError: nesting deeper than the stack
            return False
        checksums = payload.get("checksums") if isinstance(payload, dict) else None
        if not isinstance(checksums, dict) or not checksums:
            return False
        try:
            return all(isinstance(name, str) and _sha256(path / name) == digest for name, digest in checksums.items())
        except (OSError, ValueError):  # a listed file missing, or a name no path can have (NUL)
            return False

    def latest(self) -> Path | None:
        """The newest checkpoint that verifies (the ``latest`` pointer first, then by step)."""
        candidates = self.list()[::-1]
        pointer = self.directory / LATEST
        if pointer.exists():
            named = self.directory / pointer.read_text().strip()
            candidates = [named] + [c for c in candidates if c != named]
        for path in candidates:
            if path.is_dir() and self.verify(path):
                return path
            log.warning("checkpoint %s is incomplete or corrupt: skipped", path)
        return None

    def load(self, path: str | Path) -> Checkpoint:
        path = Path(path)
        if not self.verify(path):
            raise CheckpointError(f"{path} is not a complete, verified checkpoint")
        payload = json.loads((path / "state.json").read_text())
        replay_arrays = None
        try:  # checksums say the files are the ones written, not that a writer wrote them right
            if (path / "replay.safetensors").exists():
                replay_arrays = load_numpy_file(str(path / "replay.safetensors"))
            return Checkpoint(path, payload, load_torch_file(path / "model.safetensors"),
                              load_torch_file(path / "optim.safetensors"), replay_arrays)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: unreadable tensors: {exc}") from exc

    def restore(self, path: str | Path | Checkpoint, learner: Learner) -> Checkpoint:
        """Load checkpoint ``path`` (or one :meth:`load` already read) into ``learner``; CheckpointError if it
        is not one of this learner's."""
        checkpoint = path if isinstance(path, Checkpoint) else self.load(path)
        try:
            restore_learner(learner, checkpoint.model, checkpoint.optim, checkpoint.state["learner"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
            # names, shapes, dtypes or JSON that do not fit this learner: torch and the optimizers say it
            # in their own exception types, a caller needs one
            raise CheckpointError(f"{checkpoint.path} does not restore this learner: {type(exc).__name__}: {exc}") from exc
        return checkpoint

    @staticmethod
    def replay_state(checkpoint: Checkpoint) -> dict[str, Any] | None:
        """The replay state_dict saved with a checkpoint (arrays + scalars), or None."""
        if checkpoint.replay_arrays is None:
            return None
        return {**checkpoint.state.get("replay", {}), **checkpoint.replay_arrays}


def resolve_actor_file(path: str | Path) -> Path:
    """A run dir, a checkpoints dir, one checkpoint dir or an actor.safetensors -> the actor file.

    Directories resolve to the newest verified checkpoint's ``actor.safetensors``.
    Raises FileNotFoundError naming what was looked for.
    """
    p = Path(path)
    if p.is_file():
        return p
    for directory in (p / "checkpoints", p):
        latest = Checkpointer(directory).latest()
        if latest is not None:
            return latest / "actor.safetensors"
    if (p / "actor.safetensors").is_file():
        return p / "actor.safetensors"
    raise FileNotFoundError(f"no actor weights at {path}: expected actor.safetensors, a checkpoint "
                            "directory, or a run/checkpoints directory holding a verified checkpoint")
