"""Fuzz targets for the bytes that come from files and blobs: images, actor weights, checkpoints, the
replay on disk, parameter files and bags.  Each one starts from what the project's own code writes
(encode_actor, Checkpointer.save, ReplayBuffer.flush, the config files, BagRecorder) and lets the
fuzzer change the part that is parsed: a header, the JSON, the YAML, the whole small file.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from td3_drive import topics as T

from fuzz.common import Consume, ContractViolation


#: where fuzz.run puts a target's scratch directories (it removes them: libFuzzer exits without atexit)
SCRATCH_ENV = "TD3_FUZZ_SCRATCH"


def scratch_base() -> str | None:
    """RAM where there is some (a file per input would wear a disk), else the default temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def scratch(prefix: str) -> Path:
    """A scratch directory for one target."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get(SCRATCH_ENV) or scratch_base()))
    _SCRATCH_DIRS.append(path)
    return path


_SCRATCH_DIRS: list[Path] = []


def cleanup() -> None:
    """Remove every scratch directory this process made (atexit in the runner, teardown in tests)."""
    while _SCRATCH_DIRS:
        shutil.rmtree(_SCRATCH_DIRS.pop(), ignore_errors=True)


#: JSON that the project's parsers take apart: numbers at the edges, nesting, the keys they look up
JSON_TOKENS = [b"1e999", b"-1e999", b"NaN", b"Infinity", b"-1", b"18446744073709551616", b"9" * 30, b"[[[[", b"{}",
               b"[]", b"null", b"true", b'""', b'"dtype"', b'"shape"', b'"data_offsets"', b'"__metadata__"', b'"F64"',
               b'"I64"', b'"U8"', b'"BOOL"', b'"version"', b'"format"', b'"architecture"', b'"total"', b'"oldest"',
               b'"in_episode"', b'"rng_state"', b'"episodes"', b'"capacity"', b'"checksums"', b'"learner"',
               b'"state"', b'"param_groups"', b'"env_steps"', b'"replay"', b'"step"']


# ----------------------------------------------------------------------------- image
#: index -> encoding; the last entries are what a peer might send instead
IMAGE_ENCODINGS = ["bgra8", "rgba8", "bgr8", "rgb8", "mono8", "mono16", "yuv422", "32FC1", "bgra16", "", "8UC3"]
_BYTES_PER_PIXEL = {"bgra8": 4, "rgba8": 4, "bgr8": 3, "rgb8": 3, "mono8": 1, "mono16": 2}


def encode_image_input(encoding: str, height: int, width: int, step: int, data: bytes, container: int = 0,
                       bigendian: int = 0) -> bytes:
    """An image target input: the fields of a sensor_msgs/Image, then its data."""
    return (bytes([IMAGE_ENCODINGS.index(encoding), container, bigendian]) + height.to_bytes(4, "little")
            + width.to_bytes(4, "little") + step.to_bytes(4, "little") + data)


class ImageTarget:
    """sensor_msgs/Image fields -> decode_image (validation, then rosbags-image) -> to_gray84.

    Contract: InvalidMessage, or an 84x84 uint8 frame.  The data container varies as the two
    message sources give it: a numpy array (rosbags), bytes or array('B') (rclpy)."""

    name = "image"
    max_len = 64 * 1024

    def __init__(self) -> None:
        from td3_drive.driving.observation import ImageConverter, InvalidMessage, to_gray84

        self.expected = (InvalidMessage,)
        self.convert = ImageConverter("rosbags")  # what runs wherever cv_bridge (ROS 2) is absent
        self.to_gray84 = to_gray84

    def seeds(self) -> list[bytes]:
        rng = np.random.default_rng(0)
        out = []
        for encoding, (h, w) in [("bgra8", (24, 32)), ("bgr8", (20, 30)), ("rgb8", (9, 7)), ("rgba8", (100, 90)),
                                 ("mono8", (84, 336)), ("mono16", (60, 80))]:
            bpp = _BYTES_PER_PIXEL[encoding]
            step = w * bpp + (3 if encoding == "bgr8" else 0)  # one padded seed: rows wider than the pixels
            out.append(encode_image_input(encoding, h, w, step, rng.integers(0, 256, step * h, np.uint8).tobytes(),
                                          container=len(out) % 3, bigendian=int(encoding == "mono16")))
        return out

    def __call__(self, data: bytes) -> None:
        from td3_drive.runtime.messages import new_message

        c = Consume(data)
        encoding = IMAGE_ENCODINGS[c.u8() % len(IMAGE_ENCODINGS)]
        container, bigendian = c.u8() % 3, c.u8()
        height, width, step = c.u32(), c.u32(), c.u32()
        raw = c.rest()
        pixels: Any = np.frombuffer(raw, np.uint8).copy() if container == 0 else raw if container == 1 else array("B", raw)
        msg = new_message(T.IMAGE, height=height, width=width, encoding=encoding, is_bigendian=bigendian % 2,
                          step=step, data=pixels)
        frame = self.to_gray84(self.convert(msg), encoding)
        if frame.shape != (84, 84) or frame.dtype != np.uint8:
            raise ContractViolation(f"to_gray84 gave {frame.dtype}{frame.shape}")


# ----------------------------------------------------------------------------- actor weights
@functools.lru_cache(maxsize=1)
def real_actor_blob() -> bytes:
    """What the trainer publishes: encode_actor of a freshly built actor of the default architecture."""
    import torch

    from td3_drive.rl.learner import LearnerConfig
    from td3_drive.rl.models import build_actor
    from td3_drive.rl.weights import encode_actor

    torch.manual_seed(0)
    arch = LearnerConfig().actor_architecture()
    return encode_actor(build_actor(arch), 7, arch)


class WeightsTarget:
    """Actor weight bytes -> decode_actor (and read_architecture on the same bytes as a file).

    The fuzzer mutates the part that is parsed (the 8-byte length and the JSON header); the tensor data
    is appended by the harness, as it follows the header in every real blob: input byte 0 picks the
    real data, the same with a NaN in the first tensor, or none (the input is the whole blob).
    Contract: WeightsRejected, or weights of the expected layout, all finite."""

    name = "weights"
    max_len = 64 * 1024
    dictionary = JSON_TOKENS

    def __init__(self) -> None:
        from td3_drive.rl.learner import LearnerConfig
        from td3_drive.rl.weights import WeightsRejected, decode_actor, read_architecture

        self.expected = (WeightsRejected,)
        self.decode, self.read_architecture = decode_actor, read_architecture
        self.architecture = LearnerConfig().actor_architecture()
        blob = real_actor_blob()
        self.header_end = 8 + int.from_bytes(blob[:8], "little")
        data = bytearray(blob[self.header_end:])
        poisoned = bytearray(data)
        poisoned[0:4] = np.float32(np.nan).tobytes()
        self.tails = [bytes(data), bytes(poisoned), b""]
        self.file = scratch("td3_fuzz_weights_") / "actor.safetensors"

    def seeds(self) -> list[bytes]:
        blob = real_actor_blob()
        header = blob[: self.header_end]
        return [b"\0" + header, b"\1" + header, b"\2" + header]

    def __call__(self, data: bytes) -> None:
        if not data:
            return
        blob = data[1:] + self.tails[data[0] % len(self.tails)]
        self.file.write_bytes(data[1:])  # read_architecture reads the header alone
        self.read_architecture(self.file)  # None or an architecture, never an exception
        weights = self.decode(blob, self.architecture)
        for name, tensor in weights.state_dict.items():
            if not bool(tensor.isfinite().all()):
                raise ContractViolation(f"decode_actor accepted non-finite {name}")


# ----------------------------------------------------------------------------- checkpoints
CHECKPOINT_FILES = ["state.json", "model.safetensors", "optim.safetensors", "actor.safetensors", "replay.safetensors"]


def _header_end(blob: bytes) -> int:
    """Where a safetensors file's JSON header ends (its data starts)."""
    return 8 + int.from_bytes(blob[:8], "little")


class CheckpointTarget:
    """A checkpoint directory -> TrainingSession.resume (verify, load, restore learner, replay and counters).

    Made by the session itself (a few transitions, one update, save_checkpoint with the replay).  Input:
    byte 0 picks the file, byte 1 bit 0 whether the harness rewrites the checksums to fit (a checkpoint
    written by a buggy or hostile writer, not a torn one: the checksum is not a parser's guard), then the
    new content of what is parsed: all of state.json, or a safetensors file's header (its data kept).
    Contract: CheckpointError, or a resumed session."""

    name = "checkpoint"
    max_len = 64 * 1024
    dictionary = JSON_TOKENS

    def __init__(self) -> None:
        import torch

        from td3_drive.rl.checkpoint import CheckpointError, Checkpointer
        from td3_drive.rl.learner import LearnerConfig
        from td3_drive.rl.session import SessionConfig, TrainingSession
        from td3_drive.rl.synthetic import random_batch

        self.expected = (CheckpointError,)
        self.Checkpointer = Checkpointer
        workdir = scratch("td3_fuzz_checkpoint_")
        torch.manual_seed(0)
        self.session = TrainingSession(
            SessionConfig(run_dir=str(workdir / "run"), replay_capacity=16, checkpoint_replay=True, batch_size=4),
            LearnerConfig(encoder_mode="shared"), device="cpu")
        replay = self.session.replay.buffers[0]
        rng = np.random.default_rng(0)
        frame = lambda: rng.integers(0, 256, (84, 84), np.uint8)  # noqa: E731
        state = lambda: rng.normal(0, 1, T.STATE_DIM).astype(np.float32)  # noqa: E731
        for episode in range(2):
            replay.start_episode(frame(), state())
            for step in range(6):
                replay.add(rng.uniform(-1, 1, 2).astype(np.float32), 0.5, frame(), state(), False, step == 5)
        self.session.learner.update(random_batch(4))  # Adam moments in optim.safetensors
        self.session.env_steps, self.session.episodes = 12, 2
        self.base = self.session.save_checkpoint()
        self.files = {name: (self.base / name).read_bytes() for name in CHECKPOINT_FILES}
        self.digests = {name: hashlib.sha256(blob).hexdigest() for name, blob in self.files.items()}
        self.work = workdir / "fuzzed"

    def _parsed(self, name: str) -> bytes:
        blob = self.files[name]
        return blob if name.endswith(".json") else blob[: _header_end(blob)]

    def seeds(self) -> list[bytes]:
        return [bytes([i, 1]) + self._parsed(name) for i, name in enumerate(CHECKPOINT_FILES)]

    def __call__(self, data: bytes) -> None:
        c = Consume(data)
        name = CHECKPOINT_FILES[c.u8() % len(CHECKPOINT_FILES)]
        fix_checksums = c.u8() & 1
        content = c.rest()
        if not name.endswith(".json"):
            content += self.files[name][_header_end(self.files[name]):]
        shutil.rmtree(self.work, ignore_errors=True)
        step = self.work / self.base.name
        step.mkdir(parents=True)
        for other in CHECKPOINT_FILES:
            if other not in (name, "state.json"):
                os.link(self.base / other, step / other)  # unchanged: no copy
        (step / name).write_bytes(content)
        if name != "state.json":
            state = json.loads(self.files["state.json"])
            if fix_checksums:
                state["checksums"][name] = hashlib.sha256(content).hexdigest()
            (step / "state.json").write_text(json.dumps(state))
        elif fix_checksums:  # the fuzzed state.json, with checksums that verify where it has a place for them
            try:
                state = json.loads(content)
                state["checksums"] = dict(self.digests)
                del state["checksums"]["state.json"]
                (step / "state.json").write_text(json.dumps(state))
            except (ValueError, TypeError, KeyError, RecursionError):
                pass
        self.session.checkpointer = self.Checkpointer(self.work)
        self.session.resume()


# ----------------------------------------------------------------------------- replay on disk
class ReplayTarget:
    """A memmap replay directory -> ReplayBuffer(directory=...) reopen, then a sample and one more step.

    Input: byte 0 picks replay.json or one of the .npy files; the rest is replay.json's new text, or
    the .npy's new header (its data kept).  Contract: ReplayCorrupt, or a buffer that samples."""

    name = "replay"
    max_len = 16 * 1024
    dictionary = JSON_TOKENS + [b"'descr'", b"'fortran_order'", b"'shape'", b"'<f4'", b"'|u1'", b"'<i8'", b"'|O'",
                                b"True", b"(2147483647,", b"\x93NUMPY"]
    CAPACITY = 16

    def __init__(self) -> None:
        from td3_drive.rl.replay import ReplayBuffer, ReplayCorrupt

        self.expected = (ReplayCorrupt,)
        self.ReplayBuffer = ReplayBuffer
        workdir = scratch("td3_fuzz_replay_")
        self.base, self.work = workdir / "base", workdir / "fuzzed"
        buffer = ReplayBuffer(self.CAPACITY, n_step=2, directory=self.base)
        rng = np.random.default_rng(0)
        for episode in range(3):
            buffer.start_episode(rng.integers(0, 256, (84, 84), np.uint8), rng.normal(0, 1, T.STATE_DIM))
            for step in range(5):
                buffer.add(rng.uniform(-1, 1, 2), 1.0, rng.integers(0, 256, (84, 84), np.uint8),
                           rng.normal(0, 1, T.STATE_DIM), step == 4 and episode == 0, False)
        buffer.flush()  # the last episode stays open: reopening must end it
        del buffer
        self.names = sorted(p.name for p in self.base.iterdir())
        self.files = {name: (self.base / name).read_bytes() for name in self.names}

    @staticmethod
    def _npy_header_end(blob: bytes) -> int:
        return 10 + int.from_bytes(blob[8:10], "little")  # format 1.0: magic, version, uint16 length

    def seeds(self) -> list[bytes]:
        return [bytes([i]) + (blob if name.endswith(".json") else blob[: self._npy_header_end(blob)])
                for i, (name, blob) in enumerate(self.files.items())]

    def __call__(self, data: bytes) -> None:
        c = Consume(data)
        name = self.names[c.u8() % len(self.names)]
        content = c.rest()
        if name.endswith(".npy"):
            content += self.files[name][self._npy_header_end(self.files[name]):]
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.copytree(self.base, self.work)
        (self.work / name).write_bytes(content)
        buffer = self.ReplayBuffer(self.CAPACITY, n_step=2, directory=self.work)
        if len(buffer) > 0:
            batch = buffer.sample_arrays(4)
            if batch["obs"].shape != (4, 4, 84, 84):
                raise ContractViolation(f"sample of shape {batch['obs'].shape}")
        rng = np.random.default_rng(1)
        buffer.start_episode(rng.integers(0, 256, (84, 84), np.uint8), np.zeros(T.STATE_DIM))
        buffer.add(np.zeros(2), 0.0, rng.integers(0, 256, (84, 84), np.uint8), np.zeros(T.STATE_DIM), False, False)


# ----------------------------------------------------------------------------- parameter files
class ParamsTarget:
    """A ROS 2 parameter file (YAML) -> load_parameters -> each node's parameters as it reads them.

    What a node reads is ``ctx.parameter`` over its declared defaults (the list ``td3-drive params``
    prints), so that is replayed for every node kind: for_node + typed_value.  Contract:
    ParameterFileError or ParameterTypeError, or values typed like their defaults (arrays element by
    element, as rclpy types them)."""

    name = "params"
    max_len = 8 * 1024
    dictionary = [b"ros__parameters:", b"/**/", b"&a", b"*a", b"!!binary", b"!!python/object", b".inf", b".nan",
                  b"- ", b": ", b"{", b"[", b"~", b"true", b"1e400", b"0x7fffffff", b"trainer:", b"policy:",
                  b"learner:", b"hidden:", b"vehicle_namespaces:", b"\t", b"? "]

    def __init__(self) -> None:
        from td3_drive.app.config import CONFIG_DIR, load_parameters
        from td3_drive.app.embedded import NODE_KINDS, declared_parameters
        from td3_drive.runtime.parameters import ParameterFileError, ParameterTypeError, for_node, typed_value

        self.expected = (ParameterFileError, ParameterTypeError)
        self.load, self.for_node, self.typed_value = load_parameters, for_node, typed_value
        self.config_dir = CONFIG_DIR
        self.declared = {kind: {name: default for name, (default, _) in declared_parameters(kind).items()}
                         for kind in NODE_KINDS}
        self.file = scratch("td3_fuzz_params_") / "params.yaml"

    def seeds(self) -> list[bytes]:
        files = sorted(self.config_dir.glob("*.yaml")) + sorted((self.config_dir / "presets").glob("*.yaml"))
        return [p.read_bytes() for p in files]

    def __call__(self, data: bytes) -> None:
        self.file.write_bytes(data)
        parameters = self.load(self.file)
        for kind, declared in self.declared.items():
            for node in (kind, f"v1/{kind}"):
                given = self.for_node(parameters, node)
                for name, default in declared.items():
                    value = self.typed_value(node, name, default, given.get(name, default))
                    _check_typed(node, name, default, value)


def _check_typed(node: str, name: str, default: Any, value: Any) -> None:
    """The value a node gets is of its default's type (an int widened to float is fine), arrays too."""
    if default is None or value is None:
        return
    kind = float if isinstance(default, float) else type(default)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ContractViolation(f"{node}.{name}: {value!r} for a {type(default).__name__} parameter")
    if isinstance(default, list) and default:
        element = float if isinstance(default[0], float) else type(default[0])
        if not all(isinstance(v, element) and not (element is int and isinstance(v, bool)) for v in value):
            raise ContractViolation(f"{node}.{name}: {value!r} for a {type(default[0]).__name__} array")
    if isinstance(value, float) and not isinstance(default, float):
        raise ContractViolation(f"{node}.{name}: float {value!r}")


# ----------------------------------------------------------------------------- bags
class BagTarget:
    """A rosbag2 directory -> ``td3-drive play`` (embedded.play: preprocessor + policy).

    Made by BagRecorder (MCAP) and by rosbags' writer as sqlite3 (ros2 bag's Humble default) from a short
    drive's messages.  Input: byte 0 picks a bag and its metadata.yaml or storage file, the rest is that
    file's new content.  Contract: BagError, or a played bag whose undecodable
    records are counted."""

    name = "bag"
    max_len = 64 * 1024

    def __init__(self) -> None:
        from td3_drive.app.config import load_parameters, merge
        from td3_drive.app.embedded import play
        from td3_drive.runtime.bag import BagError, BagRecorder

        from fuzz import dds_targets as D

        self.expected = (BagError,)
        self.play = play
        self.parameters = merge(load_parameters("embedded"),
                                {"policy": {"device": "cpu", "backend": "torch", "explore": False}})
        workdir = scratch("td3_fuzz_bag_")
        self.base, self.work = workdir / "base", workdir / "fuzzed"
        messages: list[tuple[str, Any]] = [(D.TP.route, D.route(1.0, 40.0)), (D.TP.episode_start, D.header(1.0, "0"))]
        for i in range(3):
            t = 1.0 + i * D.DT
            messages += [(D.TP.odometry, D.odometry(t, 10.0 + i)), (D.TP.camera, D.camera(t, h=12, w=16)),
                         (D.TP.control, D.control(t))]
        with BagRecorder(self.base / "mcap") as recorder:  # what td3-drive records
            for i, (topic, msg) in enumerate(messages):
                recorder(topic, msg.__msgtype__, msg, 1.0 + i * 1e-3)
        from rosbags.rosbag2 import StoragePlugin, Writer

        from td3_drive.runtime import messages as M

        # what ros2 bag records by default on Humble, and play reads too
        with Writer(self.base / "sqlite3", version=8, storage_plugin=StoragePlugin.SQLITE3) as writer:
            connections: dict[str, Any] = {}
            for i, (topic, msg) in enumerate(messages):
                if topic not in connections:
                    connections[topic] = writer.add_connection(topic, msg.__msgtype__, typestore=M.typestore())
                writer.write(connections[topic], int((1.0 + i * 1e-3) * 1e9), M.serialize(msg))
        #: (bag, file) pairs an input can replace
        self.files = {(bag.name, p.name): p.read_bytes() for bag in sorted(self.base.iterdir())
                      for p in sorted(bag.iterdir())}
        self.keys = list(self.files)

    def seeds(self) -> list[bytes]:
        return [bytes([i]) + blob for i, blob in enumerate(self.files.values())]

    def __call__(self, data: bytes) -> None:
        c = Consume(data)
        bag, name = self.keys[c.u8() % len(self.keys)]
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.copytree(self.base / bag, self.work)
        (self.work / name).write_bytes(c.rest())
        result = self.play(self.work, self.parameters)
        if not all(math.isfinite(v) for v in result["fed"].values()):
            raise ContractViolation(f"play counted {result['fed']}")
