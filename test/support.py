"""What several test files need, written once: bridge messages built by hand, a tap recording what the
nodes publish, and sending a batch of messages through a LocalRuntime."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import numpy as np

from td3_drive import topics as T
from td3_drive.runtime.local import LocalRuntime
from td3_drive.runtime.messages import new_message, stamp

Sent = list[tuple[str, Any]]

#: what `colcon test` runs (conftest.py selects them): the ROS-facing tests (adapter, executor, launch
#: files, packaging, messages, QoS, rqt, scale-out), about a minute; `make test` and a plain pytest run all
COLCON_TESTS = ("test_ros_adapter.py", "test_ros_executor.py", "test_launch_static.py", "test_packaging.py",
                "test_observation.py", "test_control.py", "test_qos.py", "test_rqt.py", "test_scaleout.py")


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Batch-8 updates gain nothing from 2 threads, and 2 spinning threads on a busy 2-core machine cost ~4x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def header(t: float, frame_id: str = "") -> Any:
    return new_message(T.HEADER, stamp=stamp(t), frame_id=frame_id)


def image_msg(t: float, pixels: np.ndarray, encoding: str, pad: int = 0, step: int | None = None,
              truncate: int = 0) -> Any:
    """pixels (H, W[, C]) uint8 -> sensor_msgs/Image, rows padded by ``pad`` bytes."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    h, w, c = pixels.shape
    rows = pixels.reshape(h, w * c)
    if pad:
        rows = np.concatenate([rows, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    data = np.ascontiguousarray(rows).reshape(-1)
    if truncate:
        data = data[:-truncate].copy()
    return new_message(T.IMAGE, header=header(t, "ego_vehicle/rgb_front"), height=h, width=w, encoding=encoding,
                       is_bigendian=0, step=w * c + pad if step is None else step, data=data)


def odometry(t: float, x: float, y: float = 0.0, yaw: float = 0.0, speed: float = 5.0,
             quaternion: tuple[float, float, float, float] | None = None) -> Any:
    """nav_msgs/Odometry of the ego at (x, y) heading ``yaw`` (or exactly ``quaternion``), ``speed`` m/s."""
    qx, qy, qz, qw = quaternion if quaternion is not None else (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))
    pose = new_message("geometry_msgs/msg/Pose", position=new_message("geometry_msgs/msg/Point", x=x, y=y),
                       orientation=new_message("geometry_msgs/msg/Quaternion", x=qx, y=qy, z=qz, w=qw))
    twist = new_message("geometry_msgs/msg/Twist", linear=new_message("geometry_msgs/msg/Vector3", x=speed))
    return new_message(T.ODOMETRY, header=header(t, "map"), child_frame_id="ego_vehicle",
                       pose=new_message("geometry_msgs/msg/PoseWithCovariance", pose=pose),
                       twist=new_message("geometry_msgs/msg/TwistWithCovariance", twist=twist))


def route(points: Iterable[tuple[float, float]], stamp_s: float = 0.0) -> Any:
    """nav_msgs/Path through ``points``, stamped ``stamp_s`` (an episode's route: at its start)."""
    poses = [new_message("geometry_msgs/msg/PoseStamped", header=header(stamp_s, "map"),
                         pose=new_message("geometry_msgs/msg/Pose",
                                          position=new_message("geometry_msgs/msg/Point", x=float(x), y=float(y)),
                                          orientation=new_message("geometry_msgs/msg/Quaternion", w=1.0)))
             for x, y in points]
    return new_message(T.PATH, header=header(stamp_s, "map"), poses=poses)


def straight_route(length: float = 400.0, spacing: float = 2.0, stamp_s: float = 0.0) -> Any:
    """A route along +x from the origin."""
    return route([(x, 0.0) for x in np.arange(0.0, length, spacing)], stamp_s)


def control(t: float, steer: float = 0.0, throttle: float = 0.3, brake: float = 0.0, frame_id: str = "") -> Any:
    return new_message(T.CONTROL, header=header(t, frame_id), steer=steer, throttle=throttle, brake=brake)


def observation_pair(t: float, seed: int = 0) -> tuple[Any, Any]:
    """The preprocessor's two topics for stamp ``t``: a random mono8 84x336 stack and a 53-d state."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(84, 336), dtype=np.uint8)
    image = new_message(T.IMAGE, header=header(t, "ego_vehicle"), height=84, width=336, encoding="mono8",
                        is_bigendian=0, step=336, data=pixels.reshape(-1))
    state = new_message(T.JOINT_STATE, header=header(t, "ego_vehicle"), name=[f"s{i}" for i in range(53)],
                        position=rng.normal(0, 0.3, 53).astype(np.float64))
    return image, state


def send(runtime: LocalRuntime, messages: Sent) -> None:
    """Publish ``messages`` in order, then deliver everything."""
    for topic, msg in messages:
        runtime.publish(topic, msg)
    runtime.spin()


class Recorder:
    """A tap collecting (topic, msg) of everything published."""

    def __init__(self, runtime: LocalRuntime) -> None:
        self.items: list[tuple[str, Any]] = []
        runtime.add_tap(lambda topic, type_name, msg, t: self.items.append((topic, msg)))

    def on(self, topic: str) -> list:
        return [m for tp, m in self.items if tp == topic]

    def clear(self) -> None:
        self.items.clear()
