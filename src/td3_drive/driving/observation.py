"""Observation: camera image -> 84x84 grayscale frame stack, odometry + route -> kinematic vector.

Pure numpy/OpenCV, no ROS: the camera preprocessor and policy nodes call these
functions on the messages they receive.  Messages may come from rosbags (array
fields are numpy arrays) or from rclpy (``array.array`` / ``bytes``), so fields
are only read by attribute and arrays through the buffer protocol.

Conventions (ROS REP-103): world frame x east / y north, yaw counter-clockwise;
vehicle frame x forward, y left.  The lateral deviation is SIGNED, positive
when the vehicle is left of the route direction (the failed predecessor used
an unsigned deviation and its agent could not tell left from right).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np

from td3_drive import topics as T

__all__ = [
    "InvalidMessage", "ENCODINGS", "ImageConverter", "decode_image", "to_gray84", "image_to_gray84", "FrameStack",
    "FrameAblation", "IMAGE_ABLATIONS",
    "N_WAYPOINTS", "STATE_DIM", "STATE_NAMES", "VehiclePose", "pose_from_odometry", "route_from_path",
    "RouteProjection", "project_on_route", "kinematic_state", "wrap_angle",
]


class InvalidMessage(ValueError):
    """A message that cannot be turned into an observation; nodes drop it and count ``reason``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Camera image -> 84x84 grayscale
# ---------------------------------------------------------------------------------------------

#: sensor_msgs/Image encoding -> (channels, bytes per channel)
ENCODINGS: dict[str, tuple[int, int]] = {
    "bgra8": (4, 1), "rgba8": (4, 1), "bgr8": (3, 1), "rgb8": (3, 1), "mono8": (1, 1), "mono16": (1, 2),
}

_TO_GRAY = {
    "bgra8": cv2.COLOR_BGRA2GRAY, "rgba8": cv2.COLOR_RGBA2GRAY,
    "bgr8": cv2.COLOR_BGR2GRAY, "rgb8": cv2.COLOR_RGB2GRAY,
}


def _byte_view(data: Any) -> np.ndarray:
    """Flat uint8 view of an Image.data field: numpy array, bytes, bytearray, array.array or list."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)  # bytes / array.array('B') / memoryview: no copy
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)  # a plain list of ints


def _validated_rows(encoding: str, height: int, width: int, step: int, data: Any) -> np.ndarray:
    """The image's pixel bytes, (height, width * bytes per pixel), row padding sliced off (a view).

    Our checks, in front of any conversion library: each bad message is counted under its
    reason (bad_encoding, empty_image, bad_step, size_mismatch) instead of raising inside it.
    """
    if encoding not in ENCODINGS:
        raise InvalidMessage("bad_encoding", f"unsupported encoding {encoding!r}")
    channels, depth = ENCODINGS[encoding]
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise InvalidMessage("empty_image", f"{width}x{height}")
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise InvalidMessage("bad_step", f"step {step} < {row_bytes} bytes per row")
    raw = _byte_view(data)
    if raw.size < step * height:
        raise InvalidMessage("size_mismatch", f"{raw.size} bytes < step*height = {step * height}")
    return raw[: step * height].reshape(height, step)[:, :row_bytes]


class ImageConverter:
    """sensor_msgs/Image -> (height, width, channels) array, converted as ROS converts it.

    The conversion itself is the field's library: ``cv_bridge`` (``imgmsg_to_cv2``, passthrough)
    where it is installed (the ROS 2 image), else its pure-Python twin ``rosbags-image``
    (``image_to_cvimage``), by the authors of the rosbags library we read bags with.  Our
    validation runs first and hands both the rows with their padding removed: rosbags-image
    ignores ``step``, and cv_bridge (humble, ``core.py``) rounds ``step`` down to whole pixels,
    so padding that is not a multiple of the pixel size would shift every row.
    """

    BACKENDS = ("auto", "cv_bridge", "rosbags")

    def __init__(self, backend: str = "auto") -> None:
        if backend not in self.BACKENDS:
            raise ValueError(f"image backend must be one of {self.BACKENDS}, got {backend!r}")
        self._bridge: Any = None
        if backend in ("auto", "cv_bridge"):
            try:
                from cv_bridge import CvBridge
            except ImportError:
                if backend == "cv_bridge":
                    raise ImportError("cv_bridge is not installed (it comes with ROS 2: ros-<distro>-cv-bridge)")
            else:
                self._bridge = CvBridge()
        if self._bridge is None:
            from rosbags.image import image_to_cvimage

            self._to_cvimage = image_to_cvimage
        self.backend = "cv_bridge" if self._bridge is not None else "rosbags"

    def __call__(self, msg: Any) -> np.ndarray:
        rows = np.ascontiguousarray(_validated_rows(msg.encoding, msg.height, msg.width, msg.step, msg.data))
        unpadded = SimpleNamespace(encoding=msg.encoding, height=int(msg.height), width=int(msg.width),
                                   step=rows.shape[1], is_bigendian=int(msg.is_bigendian), data=rows)
        if self._bridge is not None:
            image = self._bridge.imgmsg_to_cv2(unpadded, desired_encoding="passthrough")
        else:
            image = self._to_cvimage(unpadded)
        return image if image.ndim == 3 else image[:, :, None]


_default_converter: ImageConverter | None = None


def decode_image(msg: Any) -> np.ndarray:
    """sensor_msgs/Image (rosbags or rclpy) -> (height, width, channels) array with the default
    :class:`ImageConverter`; uint8, or native uint16 for mono16.  Raises InvalidMessage."""
    global _default_converter
    if _default_converter is None:
        _default_converter = ImageConverter()
    return _default_converter(msg)


def to_gray84(image: np.ndarray, encoding: str, size: tuple[int, int] = (T.FRAME_SIZE, T.FRAME_SIZE)) -> np.ndarray:
    """Decoded image (H, W, C) -> grayscale uint8 of shape ``size`` = (height, width).

    Equivalent (within +-2 grey levels on natural images) to ``cv2.cvtColor`` then one
    ``cv2.resize(INTER_AREA)``, but about 5x faster for 800x600: OpenCV's INTER_AREA
    is cheap for exact 2x factors and slow for fractional ones (~1 ms for 800x600 -> 84x84
    on 2 CPU cores), so we first halve with exact 2x2 box averages while the image stays
    at least ``size``, convert the colour at that small size (the grey weights are linear,
    so averaging and converting commute up to rounding), then do one fractional INTER_AREA.
    All steps are box filters, so the result is anti-aliased like the direct path.
    """
    if encoding not in ENCODINGS:
        raise InvalidMessage("bad_encoding", f"unsupported encoding {encoding!r}")
    channels, depth = ENCODINGS[encoding]
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] != channels:
        raise InvalidMessage("size_mismatch", f"shape {image.shape} does not fit {encoding}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise InvalidMessage("empty_image", f"shape {image.shape}")
    if depth == 2:
        img = (img >> 8).astype(np.uint8)  # mono16: keep the most significant byte
    if channels == 1:
        img = img[:, :, 0]  # cv2 drops a singleton channel axis anyway; make it explicit
    out_h, out_w = int(size[0]), int(size[1])
    while img.shape[0] // 2 >= out_h and img.shape[1] // 2 >= out_w:
        h2, w2 = img.shape[0] // 2, img.shape[1] // 2
        # crop an odd last row/column so the factor is exactly 2 (OpenCV's fast path)
        img = cv2.resize(img[: 2 * h2, : 2 * w2], (w2, h2), interpolation=cv2.INTER_AREA)
    if channels > 1:
        img = cv2.cvtColor(img, _TO_GRAY[encoding])
    if img.shape != (out_h, out_w):
        img = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img, dtype=np.uint8)


def image_to_gray84(msg: Any, size: tuple[int, int] = (T.FRAME_SIZE, T.FRAME_SIZE)) -> np.ndarray:
    """sensor_msgs/Image (rosbags or rclpy) -> grayscale uint8 of shape ``size``."""
    return to_gray84(decode_image(msg), msg.encoding, size)


IMAGE_ABLATIONS = ("none", "blank", "shuffled")


class FrameAblation:
    """What the policy sees instead of the camera, to measure how much it uses it.

    ``none``: the frame itself.  ``blank``: zeros.  ``shuffled``: the frame of the same tick of the
    previous episode (its last frame once that episode is over; zeros in the first episode), so the
    images look like driving but say nothing about this episode's road or cars.
    """

    def __init__(self, mode: str = "none") -> None:
        if mode not in IMAGE_ABLATIONS:
            raise ValueError(f"image_ablation must be one of {IMAGE_ABLATIONS}, got {mode!r}")
        self.mode = mode
        self._previous: list[np.ndarray] = []
        self._current: list[np.ndarray] = []

    def __call__(self, frame: np.ndarray, new_episode: bool) -> np.ndarray:
        if self.mode == "none":
            return frame
        if self.mode == "blank":
            return np.zeros_like(frame)
        if new_episode and self._current:
            self._previous, self._current = self._current, []
        self._current.append(frame)
        if not self._previous:
            return np.zeros_like(frame)
        return self._previous[min(len(self._current), len(self._previous)) - 1]


class FrameStack:
    """The last ``k`` frames, oldest first (k x 84 x 84 uint8, as the CNN expects)."""

    def __init__(self, k: int = 4, frame_shape: tuple[int, int] = (T.FRAME_SIZE, T.FRAME_SIZE)) -> None:
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k = k
        self.frame_shape = tuple(frame_shape)
        self._frames = np.zeros((k, *self.frame_shape), dtype=np.uint8)
        self._ready = False

    def _check(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape:
            raise ValueError(f"frame shape {frame.shape} != {self.frame_shape}")
        return frame

    def reset(self, frame: np.ndarray) -> None:
        """Start an episode: every slot holds ``frame`` (no zero frames leak into the stack)."""
        self._frames[:] = self._check(frame)
        self._ready = True

    def push(self, frame: np.ndarray) -> None:
        """Append the newest frame, dropping the oldest."""
        if not self._ready:
            raise RuntimeError("FrameStack.push before reset")
        frame = self._check(frame)
        self._frames[:-1] = self._frames[1:]  # 4 x 7 KB memmove: simpler than a ring buffer, as fast
        self._frames[-1] = frame

    @property
    def ready(self) -> bool:
        """True once reset() has been called."""
        return self._ready

    def stacked(self) -> np.ndarray:
        """(k, H, W) uint8 copy, oldest first (safe to keep, e.g. in the replay buffer)."""
        return self._frames.copy()

    def side_by_side(self) -> np.ndarray:
        """(H, k*W) uint8, oldest left: one mono8 image for rqt_image_view."""
        return np.ascontiguousarray(np.concatenate(list(self._frames), axis=1))


# ---------------------------------------------------------------------------------------------
# Odometry + route -> kinematic state
# ---------------------------------------------------------------------------------------------

N_WAYPOINTS = 25
STATE_NAMES: list[str] = ["speed", "lateral_deviation", "heading_error"] + [
    f"wp{i:02d}_{axis}" for i in range(N_WAYPOINTS) for axis in ("x", "y")
]
STATE_DIM = len(STATE_NAMES)
assert STATE_DIM == T.STATE_DIM, "the state topic carries T.STATE_DIM values"


def wrap_angle(angle: float) -> float:
    """Wrap an angle to [-pi, pi]."""
    return math.atan2(math.sin(angle), math.cos(angle))


@dataclass
class VehiclePose:
    """Planar vehicle state in the world (map) frame.

    ``speed`` is in m/s and signed: negative when the vehicle moves backwards along its
    own x axis, so that reversing is never mistaken for driving forward.
    """

    x: float
    y: float
    yaw: float
    speed: float


def pose_from_odometry(msg: Any) -> VehiclePose:
    """nav_msgs/Odometry -> VehiclePose.

    Yaw from the orientation quaternion; speed = norm of twist.twist.linear, negated when
    its x component is negative (the bridge's twist is in the child, i.e. vehicle, frame).
    Raises InvalidMessage (non_finite, bad_quaternion).
    """
    p = msg.pose.pose.position
    q = msg.pose.pose.orientation
    v = msg.twist.twist.linear
    values = [float(p.x), float(p.y), float(q.x), float(q.y), float(q.z), float(q.w),
              float(v.x), float(v.y), float(v.z)]
    if not all(math.isfinite(value) for value in values):
        raise InvalidMessage("non_finite", "odometry has NaN/Inf")
    px, py, qx, qy, qz, qw, vx, vy, vz = values
    if qx * qx + qy * qy + qz * qz + qw * qw < 1e-12:
        raise InvalidMessage("bad_quaternion", "zero orientation quaternion")
    # this form of the yaw is invariant to the quaternion's scale, so no normalisation is needed
    yaw = math.atan2(2.0 * (qw * qz + qx * qy), qw * qw + qx * qx - qy * qy - qz * qz)
    speed = math.sqrt(vx * vx + vy * vy + vz * vz)
    return VehiclePose(x=px, y=py, yaw=yaw, speed=-speed if vx < 0.0 else speed)


def route_from_path(msg: Any) -> np.ndarray:
    """nav_msgs/Path -> (N, 2) float64 route (x, y), consecutive duplicates removed.

    Raises InvalidMessage (empty_route, non_finite, degenerate_route when < 2 distinct points).
    """
    poses = msg.poses
    if len(poses) == 0:
        raise InvalidMessage("empty_route", "Path has no poses")
    route = np.array([(ps.pose.position.x, ps.pose.position.y) for ps in poses], dtype=np.float64)
    if not np.isfinite(route).all():
        raise InvalidMessage("non_finite", "route has NaN/Inf")
    keep = np.ones(len(route), dtype=bool)
    keep[1:] = np.any(route[1:] != route[:-1], axis=1)  # zero-length segments have no direction
    route = route[keep]
    if len(route) < 2:
        raise InvalidMessage("degenerate_route", "route needs at least 2 distinct points")
    return route


@dataclass
class RouteProjection:
    """Where the vehicle is relative to the route polyline.

    index: the closest segment runs from route[index] to route[index + 1] (on a vertex, the
        segment starting there), so route[index + 1] is the next waypoint ahead.
    s_along: arc length (m) from the route start to the closest point.
    lateral: signed distance (m) to the closest segment's line, positive = vehicle LEFT of the route.
    heading_error: vehicle yaw - segment yaw, wrapped to [-pi, pi].
    remaining: route length - s_along (m).
    """

    index: int
    s_along: float
    lateral: float
    heading_error: float
    remaining: float


def project_on_route(pose: VehiclePose, route: np.ndarray) -> RouteProjection:
    """Closest point of the route polyline (segments, not only vertices) to the vehicle.

    Vectorised over segments: O(N) numpy, a few tens of microseconds for thousands of points.
    The search is global, so a route passing close to itself may snap to the wrong part.
    Zero-length segments are skipped.  Raises InvalidMessage for an unusable route.
    """
    route = np.asarray(route, dtype=np.float64)
    if route.ndim != 2 or route.shape[1] != 2 or len(route) < 2:
        raise InvalidMessage("degenerate_route", f"route shape {route.shape}, need (N>=2, 2)")
    a = route[:-1]
    d = route[1:] - a
    seg_len2 = np.einsum("ij,ij->i", d, d)
    if not np.any(seg_len2 > 0.0):
        raise InvalidMessage("degenerate_route", "all route points coincide")
    rel = np.array([pose.x, pose.y]) - a
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip(np.einsum("ij,ij->i", rel, d) / seg_len2, 0.0, 1.0)
    off = rel - t[:, None] * d  # vehicle minus its closest point on each segment
    dist2 = np.einsum("ij,ij->i", off, off)
    dist2[~(seg_len2 > 0.0)] = np.inf  # also catches the NaN of 0/0
    i = int(np.argmin(dist2))
    if t[i] >= 1.0 and i + 1 < len(t) and seg_len2[i + 1] > 0.0:
        # closest point is the vertex ending segment i, which also starts segment i + 1 (just as
        # close): report the segment ahead, so route[index + 1] is a waypoint still to be reached
        i += 1

    seg_len = math.sqrt(seg_len2[i])
    dx, dy = d[i]
    # Frenet lateral: 2-D cross product of the segment direction with (vehicle - segment start);
    # extends the first/last segment as a line, so the sign is stable before the start / after the end
    lateral = (dx * rel[i, 1] - dy * rel[i, 0]) / seg_len
    heading_error = wrap_angle(pose.yaw - math.atan2(dy, dx))
    lengths = np.sqrt(seg_len2)
    s_along = float(lengths[:i].sum() + t[i] * seg_len)
    remaining = float(lengths.sum() - s_along)
    return RouteProjection(index=i, s_along=s_along, lateral=float(lateral),
                           heading_error=heading_error, remaining=max(remaining, 0.0))


def kinematic_state(pose: VehiclePose, route: np.ndarray, n_waypoints: int = N_WAYPOINTS,
                    speed_scale: float = 30.0, lateral_scale: float = 3.5,
                    waypoint_scale: float = 50.0,
                    projection: RouteProjection | None = None) -> np.ndarray:
    """The kinematic observation, float32 of length 3 + 2 * n_waypoints (STATE_DIM = 53 by default).

    [speed / speed_scale, lateral / lateral_scale, heading_error / pi,
     then the next ``n_waypoints`` route points after the projection (route[index + 1], ...),
     in the vehicle frame (x forward, y left) / waypoint_scale, x and y interleaved],
    padded with the last route point near the end.  Pass ``projection`` to reuse one already
    computed for this pose and route (the reward does the same projection).  Raises InvalidMessage
    (non_finite) rather than return a state that is not finite.
    """
    route = np.asarray(route, dtype=np.float64)
    proj = projection if projection is not None else project_on_route(pose, route)
    idx = np.minimum(np.arange(proj.index + 1, proj.index + 1 + n_waypoints), len(route) - 1)
    rel = route[idx] - (pose.x, pose.y)
    c, s = math.cos(pose.yaw), math.sin(pose.yaw)
    state = np.empty(3 + 2 * n_waypoints, dtype=np.float32)
    state[0] = pose.speed / speed_scale
    state[1] = proj.lateral / lateral_scale
    state[2] = proj.heading_error / math.pi
    state[3::2] = (c * rel[:, 0] + s * rel[:, 1]) / waypoint_scale  # world -> vehicle: rotate by -yaw
    state[4::2] = (-s * rel[:, 0] + c * rel[:, 1]) / waypoint_scale
    if not np.isfinite(state).all():  # finite coordinates so far out (1e300 m) that the vehicle frame overflows
        raise InvalidMessage("non_finite", "kinematic state overflows: route or pose coordinates out of range")
    return state
