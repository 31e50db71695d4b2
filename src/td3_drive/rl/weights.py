"""Actor weights as bytes: what the trainer publishes and the policy hot-swaps.

Format: a safetensors blob of the actor's state dict whose metadata carries a
format tag, a version (the learner's update count) and the architecture.  The
receiver checks size, header, metadata, names, shapes and dtypes from the JSON
header *before* any tensor is built, then that every value is finite.  Nothing
here can execute code (safetensors, no pickle).
"""
from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from td3_drive.rl.models import Actor, ActorArchitecture, build_actor

FORMAT = "td3_drive.actor.v1"
MAX_WEIGHT_BYTES = 64 * 1024 * 1024  # the actor is ~7 MB; anything far larger is not ours
MAX_HEADER_BYTES = 1024 * 1024
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


class WeightsRejected(ValueError):
    """Weights that must not be loaded; ``reason`` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class ActorWeights:
    state_dict: dict[str, torch.Tensor]
    version: int
    architecture: ActorArchitecture


def encode_actor(actor: Actor, version: int, architecture: ActorArchitecture) -> bytes:
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in actor.state_dict().items()}
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise WeightsRejected("non_finite", f"refusing to export non-finite {name}")
    metadata = {"format": FORMAT, "version": str(int(version)), "architecture": architecture.to_json()}
    return save_safetensors(state, metadata=metadata)


@functools.lru_cache(maxsize=8)
def _expected_layout(architecture: ActorArchitecture) -> dict[str, tuple[str, list[int]]]:
    # building a reference actor costs ~15 ms: once per architecture, not once per weight message
    reference = build_actor(architecture).state_dict()
    return {k: (_DTYPES[v.dtype], list(v.shape)) for k, v in reference.items()}


def _read_header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise WeightsRejected("truncated", f"{len(data)} bytes")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise WeightsRejected("bad_header", f"header length {header_len} for {len(data)} bytes")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # nesting deeper than the stack
        raise WeightsRejected("bad_header", str(exc)) from None
    if not isinstance(header, dict):
        raise WeightsRejected("bad_header", "header is not an object")
    return header


def _read_metadata(metadata: dict[str, Any]) -> tuple[int, ActorArchitecture]:
    """The format tag, version and architecture a weight blob's metadata must hold."""
    if not isinstance(metadata, dict):
        raise WeightsRejected("bad_metadata", f"metadata is a {type(metadata).__name__}, not an object")
    if metadata.get("format") != FORMAT:
        raise WeightsRejected("wrong_format", f"format {metadata.get('format')!r}")
    try:
        return int(metadata["version"]), ActorArchitecture.from_dict(json.loads(metadata["architecture"]))
    except (KeyError, ValueError, TypeError, OverflowError, RecursionError) as exc:  # a version of 1e999: int(inf)
        raise WeightsRejected("bad_metadata", str(exc)) from None


def decode_actor(data: bytes | np.ndarray, expected_architecture: ActorArchitecture,
                 max_bytes: int = MAX_WEIGHT_BYTES) -> ActorWeights:
    """Validate and decode actor weights (bytes or a uint8 array); raises :class:`WeightsRejected`."""
    if len(data) > max_bytes:  # before copying a single byte (a message's uint8 array or bytes)
        raise WeightsRejected("oversized", f"{len(data)} bytes > cap {max_bytes}")
    data = bytes(data)
    header = _read_header(data)
    version, architecture = _read_metadata(header.pop("__metadata__", None) or {})
    if architecture != expected_architecture:
        raise WeightsRejected("wrong_architecture", f"{architecture} != {expected_architecture}")
    expected = _expected_layout(expected_architecture)
    layout = {k: (v.get("dtype"), v.get("shape")) for k, v in header.items() if isinstance(v, dict)}
    if layout != expected:
        missing, extra = set(expected) - set(layout), set(layout) - set(expected)
        raise WeightsRejected("wrong_architecture", f"tensor layout differs (missing {sorted(missing)[:3]}, "
                                                    f"extra {sorted(extra)[:3]})")
    try:
        state = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error types on corrupt offsets
        raise WeightsRejected("bad_data", str(exc)) from None
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise WeightsRejected("non_finite", name)
    return ActorWeights(state, version, architecture)


def architecture_of(data: bytes | np.ndarray, max_bytes: int = MAX_WEIGHT_BYTES) -> ActorArchitecture:
    """The architecture a weight blob declares, from its header alone; raises :class:`WeightsRejected`."""
    if len(data) > max_bytes:
        raise WeightsRejected("oversized", f"{len(data)} bytes > cap {max_bytes}")
    # only the JSON header is copied, never the tensors
    raw = np.asarray(data, dtype=np.uint8).reshape(-1) if isinstance(data, np.ndarray) else data
    head = bytes(memoryview(raw)[:8 + MAX_HEADER_BYTES])
    return _read_metadata(_read_header(head).pop("__metadata__", None) or {})[1]


def read_architecture(path: str | Path) -> ActorArchitecture | None:
    """The architecture in an actor.safetensors file's metadata, from its JSON header alone (None: none)."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        data = prefix + f.read(min(size, MAX_HEADER_BYTES))
    try:
        return _read_metadata(_read_header(data).get("__metadata__") or {})[1]
    except WeightsRejected:
        return None
