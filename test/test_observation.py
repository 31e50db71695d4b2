"""Tests for td3_drive.driving.observation: image decoding, grayscale resize, frame stack, route geometry."""
from __future__ import annotations

import array
import math

import cv2
import numpy as np
import pytest

from td3_drive.driving.observation import (
    ENCODINGS,
    STATE_DIM,
    STATE_NAMES,
    FrameStack,
    ImageConverter,
    InvalidMessage,
    VehiclePose,
    decode_image,
    image_to_gray84,
    kinematic_state,
    pose_from_odometry,
    project_on_route,
    route_from_path,
    to_gray84,
)
from td3_drive.runtime.messages import new_message


def _image(encoding: str, height: int, width: int, step: int, data, is_bigendian: int = 0):
    return new_message("sensor_msgs/msg/Image", height=height, width=width, encoding=encoding,
                       is_bigendian=is_bigendian, step=step, data=data)

# ----------------------------------------------------------------------------- images

RNG = np.random.default_rng(0)


def padded_bytes(pixels: np.ndarray, pad: int) -> tuple[bytes, int]:
    """Serialise (H, W, C) uint8 pixels row by row with ``pad`` junk bytes after each row."""
    h = pixels.shape[0]
    rows = pixels.reshape(h, -1)
    junk = np.full((h, pad), 0xAB, dtype=np.uint8)
    return np.concatenate([rows, junk], axis=1).tobytes(), rows.shape[1] + pad


@pytest.mark.parametrize("encoding,channels", [("bgra8", 4), ("rgba8", 4), ("bgr8", 3), ("rgb8", 3),
                                               ("mono8", 1)])
@pytest.mark.parametrize("pad", [0, 3, 64])
def test_decode_recovers_pixels_with_row_padding(encoding: str, channels: int, pad: int) -> None:
    pixels = RNG.integers(0, 256, (5, 7, channels), dtype=np.uint8)
    data, step = padded_bytes(pixels, pad)
    image = decode_image(_image(encoding, 5, 7, step, data))
    assert image.shape == (5, 7, channels) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, pixels)


@pytest.mark.parametrize("container", [bytes, lambda b: array.array("B", b),
                                       lambda b: np.frombuffer(b, np.uint8).copy(), list])
def test_decode_accepts_rclpy_and_rosbags_containers(container) -> None:
    pixels = RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    data, step = padded_bytes(pixels, 8)
    np.testing.assert_array_equal(decode_image(_image("bgra8", 3, 4, step, container(data))), pixels)


def test_decode_of_unpadded_rows_is_a_view_without_copy() -> None:
    buf = np.zeros(600 * 3200, dtype=np.uint8)  # 800 px bgra, as CARLA sends it
    assert np.shares_memory(decode_image(_image("bgra8", 600, 800, 3200, buf)), buf)


def test_decode_mono16_both_byte_orders() -> None:
    values = np.array([[1, 256, 65535], [4660, 0, 43981]], dtype=np.uint16)
    little = values.astype("<u2").tobytes()
    big = values.astype(">u2").tobytes()
    np.testing.assert_array_equal(decode_image(_image("mono16", 2, 3, 6, little, 0))[:, :, 0], values)
    np.testing.assert_array_equal(decode_image(_image("mono16", 2, 3, 6, big, 1))[:, :, 0], values)
    gray = to_gray84(decode_image(_image("mono16", 2, 3, 6, little)), "mono16", size=(2, 3))
    np.testing.assert_array_equal(gray, values >> 8)


@pytest.mark.parametrize("args,reason", [
    (("yuv422", 2, 2, 4, bytes(8)), "bad_encoding"),
    (("bgra8", 0, 2, 8, b""), "empty_image"),
    (("bgra8", 2, -1, 8, bytes(16)), "empty_image"),
    (("bgra8", 2, 2, 7, bytes(16)), "bad_step"),
    (("bgra8", 2, 2, 8, bytes(15)), "size_mismatch"),
    (("rgb8", 2, 2, 8, bytes(15)), "size_mismatch"),  # padded step counts for every row
])
def test_decode_rejects_bad_sizes(args, reason: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        decode_image(_image(*args))
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


# ---- the conversion is cv_bridge's (ROS 2) or rosbags-image's (embedded, bags): the same arrays
def _cases():
    rng = np.random.default_rng(7)
    for encoding, (channels, depth) in ENCODINGS.items():
        for pad, big in [(0, 0), (6, 0)] + ([(0, 1), (4, 1)] if depth == 2 else []):
            values = rng.integers(0, 256 ** depth, (5, 7, channels), dtype=np.uint16 if depth == 2 else np.uint8)
            rows = values.astype(">u2" if big else "<u2") if depth == 2 else values
            raw = rows.reshape(5, -1).view(np.uint8)
            data = np.concatenate([raw, np.full((5, pad), 0xAB, np.uint8)], axis=1).reshape(-1)
            yield pytest.param(encoding, values, _image(encoding, 5, 7, raw.shape[1] + pad, data, big),
                               id=f"{encoding}-pad{pad}-{'big' if big else 'little'}")


class _FakeCvBridge:
    """cv_bridge's ``imgmsg_to_cv2(msg, 'passthrough')`` as ros-perception/vision_opencv humble
    implements it (cv_bridge/python/cv_bridge/core.py, lines 168-189), for machines without ROS."""

    DTYPES = {"mono8": ("uint8", 1), "mono16": ("uint16", 1), "bgr8": ("uint8", 3), "rgb8": ("uint8", 3),
              "bgra8": ("uint8", 4), "rgba8": ("uint8", 4)}
    calls: list = []

    def imgmsg_to_cv2(self, img_msg, desired_encoding="passthrough"):
        import sys

        assert desired_encoding == "passthrough"
        self.calls.append(img_msg)
        dtype, n_channels = self.DTYPES[img_msg.encoding]
        dtype = np.dtype(dtype).newbyteorder(">" if img_msg.is_bigendian else "<")
        buf = np.asarray(img_msg.data, dtype=dtype) if isinstance(img_msg.data, list) else img_msg.data
        if n_channels == 1:
            im = np.ndarray(shape=(img_msg.height, int(img_msg.step / dtype.itemsize)), dtype=dtype, buffer=buf)
            im = np.ascontiguousarray(im[:img_msg.height, :img_msg.width])
        else:
            im = np.ndarray(shape=(img_msg.height, int(img_msg.step / dtype.itemsize / n_channels), n_channels),
                            dtype=dtype, buffer=buf)
            im = np.ascontiguousarray(im[:img_msg.height, :img_msg.width, :])
        if img_msg.is_bigendian == (sys.byteorder == "little"):
            im = im.byteswap().view(im.dtype.newbyteorder())  # numpy 2 spelling of .newbyteorder()
        return im


@pytest.fixture
def fake_cv_bridge(monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "cv_bridge", types.SimpleNamespace(CvBridge=_FakeCvBridge))
    _FakeCvBridge.calls = []
    return _FakeCvBridge


@pytest.mark.parametrize("encoding, values, msg", list(_cases()))
def test_rosbags_image_converts_every_accepted_encoding(encoding, values, msg) -> None:
    converter = ImageConverter("rosbags")
    assert converter.backend == "rosbags"
    np.testing.assert_array_equal(converter(msg), values)


@pytest.mark.parametrize("encoding, values, msg", list(_cases()))
def test_cv_bridge_path_gives_the_same_arrays(encoding, values, msg, request) -> None:
    try:
        import cv_bridge  # noqa: F401
    except ImportError:
        request.getfixturevalue("fake_cv_bridge")  # the upstream logic, run on our message objects
    converter = ImageConverter("cv_bridge")
    assert converter.backend == "cv_bridge"
    np.testing.assert_array_equal(converter(msg), ImageConverter("rosbags")(msg))
    np.testing.assert_array_equal(converter(msg), values)


def test_real_cv_bridge_when_installed() -> None:
    cv_bridge = pytest.importorskip("cv_bridge", reason="cv_bridge comes with ROS 2 (the Docker image), "
                                                        "not pip: the fake above runs its upstream logic")
    assert ImageConverter().backend == "cv_bridge" and cv_bridge is not None


def test_validation_runs_before_the_library(fake_cv_bridge) -> None:
    converter = ImageConverter("auto")
    assert converter.backend == "cv_bridge"
    with pytest.raises(InvalidMessage) as info:
        converter(_image("bgra8", 2, 2, 8, bytes(15)))
    assert info.value.reason == "size_mismatch" and fake_cv_bridge.calls == []
    with pytest.raises(ValueError):
        ImageConverter("pillow")


def test_channel_order_gives_the_right_gray() -> None:
    # pure red: gray = 0.299 * 255 = 76; pure blue: 0.114 * 255 = 29
    red_bgr = np.zeros((2, 2, 3), np.uint8)
    red_bgr[..., 2] = 255
    red_rgb = red_bgr[..., ::-1].copy()
    for image, encoding in [(red_bgr, "bgr8"), (red_rgb, "rgb8"),
                            (np.dstack([red_bgr, np.full((2, 2), 7, np.uint8)]), "bgra8"),
                            (np.dstack([red_rgb, np.full((2, 2), 7, np.uint8)]), "rgba8")]:
        gray = to_gray84(image, encoding, size=(2, 2))
        assert gray.dtype == np.uint8 and gray.shape == (2, 2)
        assert np.all(gray == 76), (encoding, gray)
    # reading BGR bytes as RGB would see blue, not red
    assert np.all(to_gray84(red_bgr, "rgb8", size=(2, 2)) == 29)


def test_to_gray84_shape_and_constant_image() -> None:
    image = np.zeros((600, 800, 4), np.uint8)
    image[..., :3] = (10, 200, 30)  # b, g, r
    gray = to_gray84(image, "bgra8")
    assert gray.shape == (84, 84) and gray.dtype == np.uint8
    expected = round(0.114 * 10 + 0.587 * 200 + 0.299 * 30)
    assert np.all(np.abs(gray.astype(int) - expected) <= 1)


def test_to_gray84_close_to_direct_cvtcolor_and_area_resize() -> None:
    # a natural-ish image: smooth noise plus sharp lane-marking-like stripes
    image = cv2.GaussianBlur(RNG.integers(0, 256, (600, 800, 4), dtype=np.uint8), (0, 0), 3)
    image[:, 100:120] = 255
    direct = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY), (84, 84), interpolation=cv2.INTER_AREA)
    diff = np.abs(to_gray84(image, "bgra8").astype(int) - direct.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 8


def test_to_gray84_odd_sizes_and_non_square_target() -> None:
    image = RNG.integers(0, 256, (333, 501, 3), dtype=np.uint8)
    assert to_gray84(image, "rgb8").shape == (84, 84)
    assert to_gray84(image, "rgb8", size=(60, 90)).shape == (60, 90)
    small = RNG.integers(0, 256, (40, 50, 1), dtype=np.uint8)  # upscaling works too
    assert to_gray84(small, "mono8").shape == (84, 84)


def test_to_gray84_rejects_channel_mismatch() -> None:
    with pytest.raises(InvalidMessage) as info:
        to_gray84(np.zeros((10, 10, 3), np.uint8), "bgra8")
    assert info.value.reason == "size_mismatch"


def test_image_to_gray84_from_message() -> None:
    pixels = np.zeros((60, 80, 4), np.uint8)
    pixels[:, :40, :3] = 255  # left half white
    data, step = padded_bytes(pixels, 16)
    msg = new_message("sensor_msgs/msg/Image", height=60, width=80, encoding="bgra8", step=step,
                      data=np.frombuffer(data, np.uint8))
    gray = image_to_gray84(msg)
    assert gray.shape == (84, 84)
    assert np.all(gray[:, :40] == 255) and np.all(gray[:, 44:] == 0)


# ----------------------------------------------------------------------------- frame stack

def frame(value: int) -> np.ndarray:
    return np.full((84, 84), value, np.uint8)


def test_frame_stack_reset_fills_and_push_keeps_order() -> None:
    stack = FrameStack(k=4)
    with pytest.raises(RuntimeError):
        stack.push(frame(0))
    stack.reset(frame(9))
    assert stack.stacked().shape == (4, 84, 84)
    assert [int(f[0, 0]) for f in stack.stacked()] == [9, 9, 9, 9]
    for v in (1, 2, 3):
        stack.push(frame(v))
    assert [int(f[0, 0]) for f in stack.stacked()] == [9, 1, 2, 3]
    stack.push(frame(4))
    stacked = stack.stacked()
    assert [int(f[0, 0]) for f in stacked] == [1, 2, 3, 4]
    stack.push(frame(5))
    assert stacked[0, 0, 0] == 1  # stacked() is a copy, not a view of the live buffer
    side = stack.side_by_side()
    assert side.shape == (84, 4 * 84) and side.dtype == np.uint8
    assert [int(side[0, i * 84]) for i in range(4)] == [2, 3, 4, 5]
    stack.reset(frame(7))
    assert np.all(stack.stacked() == 7)
    with pytest.raises(ValueError):
        stack.push(np.zeros((84, 85), np.uint8))


# ----------------------------------------------------------------------------- messages -> pose/route

def odometry(x: float, y: float, yaw: float, vx: float = 0.0, vy: float = 0.0):
    q = new_message("geometry_msgs/msg/Quaternion", x=0.0, y=0.0, z=math.sin(yaw / 2), w=math.cos(yaw / 2))
    pose = new_message("geometry_msgs/msg/Pose", position=new_message("geometry_msgs/msg/Point", x=x, y=y, z=0.3),
                       orientation=q)
    twist = new_message("geometry_msgs/msg/Twist", linear=new_message("geometry_msgs/msg/Vector3", x=vx, y=vy, z=0.0))
    return new_message("nav_msgs/msg/Odometry",
                       pose=new_message("geometry_msgs/msg/PoseWithCovariance", pose=pose),
                       twist=new_message("geometry_msgs/msg/TwistWithCovariance", twist=twist))


def path(points) -> object:
    poses = [new_message("geometry_msgs/msg/PoseStamped", pose=new_message(
        "geometry_msgs/msg/Pose", position=new_message("geometry_msgs/msg/Point", x=float(x), y=float(y), z=0.0),
        orientation=new_message("geometry_msgs/msg/Quaternion", w=1.0))) for x, y in points]
    return new_message("nav_msgs/msg/Path", poses=poses)


def test_pose_from_odometry() -> None:
    pose = pose_from_odometry(odometry(3.0, -2.0, 2.5, vx=3.0, vy=4.0))
    assert (pose.x, pose.y) == (3.0, -2.0)
    assert pose.yaw == pytest.approx(2.5)
    assert pose.speed == pytest.approx(5.0)
    assert pose_from_odometry(odometry(0, 0, -3.0, vx=-2.0)).speed == pytest.approx(-2.0)  # reversing
    unnormalised = odometry(0, 0, 0.0)
    unnormalised.pose.pose.orientation.z, unnormalised.pose.pose.orientation.w = 2.0, -2.0
    assert pose_from_odometry(unnormalised).yaw == pytest.approx(-math.pi / 2)
    with pytest.raises(InvalidMessage) as info:
        pose_from_odometry(odometry(float("nan"), 0.0, 0.0))
    assert info.value.reason == "non_finite"
    with pytest.raises(InvalidMessage) as info:
        pose_from_odometry(new_message("nav_msgs/msg/Odometry"))  # all-zero quaternion
    assert info.value.reason == "bad_quaternion"


def test_route_from_path() -> None:
    route = route_from_path(path([(0, 0), (1, 0), (1, 0), (2, 1)]))
    np.testing.assert_array_equal(route, [[0, 0], [1, 0], [2, 1]])  # duplicate removed
    for points, reason in [([], "empty_route"), ([(1, 1), (1, 1)], "degenerate_route"),
                           ([(1, 1)], "degenerate_route"), ([(0, 0), (float("inf"), 0)], "non_finite")]:
        with pytest.raises(InvalidMessage) as info:
            route_from_path(path(points))
        assert info.value.reason == reason


# ----------------------------------------------------------------------------- route geometry

STRAIGHT = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]])


def arc(radius: float = 20.0, n: int = 200) -> np.ndarray:
    """Counter-clockwise (left-turning) quarter circle centred at (0, radius), starting at the origin."""
    theta = np.linspace(-math.pi / 2, 0.0, n)
    return np.stack([radius * np.cos(theta), radius + radius * np.sin(theta)], axis=1)


@pytest.mark.parametrize("y,expected", [(1.5, 1.5), (-0.7, -0.7), (0.0, 0.0)])
def test_lateral_sign_on_a_straight_route(y: float, expected: float) -> None:
    proj = project_on_route(VehiclePose(x=15.0, y=y, yaw=0.0, speed=0.0), STRAIGHT)
    assert proj.lateral == pytest.approx(expected)  # left of an eastbound route is +y
    assert proj.index == 1
    assert proj.s_along == pytest.approx(15.0)
    assert proj.remaining == pytest.approx(15.0)
    # the same points driven westbound: left is now -y
    back = project_on_route(VehiclePose(x=15.0, y=y, yaw=math.pi, speed=0.0), STRAIGHT[::-1])
    assert back.lateral == pytest.approx(-expected)
    assert back.heading_error == pytest.approx(0.0, abs=1e-9)


def test_projection_uses_segments_not_vertices() -> None:
    sparse = np.array([[0.0, 0.0], [100.0, 0.0]])
    proj = project_on_route(VehiclePose(50.0, -1.0, 0.0, 0.0), sparse)
    assert proj.lateral == pytest.approx(-1.0) and proj.s_along == pytest.approx(50.0)


def test_lateral_sign_on_a_curved_route() -> None:
    radius = 20.0
    route = arc(radius)
    centre = np.array([0.0, radius])
    theta = -math.pi / 4  # halfway round the turn; route direction there is theta + pi/2
    on_route = centre + radius * np.array([math.cos(theta), math.sin(theta)])
    inward = (centre - on_route) / radius  # toward the centre = left of a left turn
    direction_yaw = theta + math.pi / 2
    inside = project_on_route(VehiclePose(*(on_route + 1.0 * inward), direction_yaw, 0.0), route)
    outside = project_on_route(VehiclePose(*(on_route - 1.0 * inward), direction_yaw, 0.0), route)
    assert inside.lateral == pytest.approx(1.0, abs=0.01)
    assert outside.lateral == pytest.approx(-1.0, abs=0.01)
    assert inside.heading_error == pytest.approx(0.0, abs=0.01)
    assert inside.s_along == pytest.approx(radius * math.pi / 4, rel=1e-3)
    # a right turn: mirror the arc; the inside is now on the right, so negative
    mirrored = route * [1.0, -1.0]
    right_inside = project_on_route(VehiclePose(on_route[0] + inward[0], -(on_route[1] + inward[1]),
                                                -direction_yaw, 0.0), mirrored)
    assert right_inside.lateral == pytest.approx(-1.0, abs=0.01)


def test_heading_error_wraps_near_pi() -> None:
    westbound = STRAIGHT[::-1]  # segment yaw = pi
    just_below = project_on_route(VehiclePose(15.0, 0.0, -math.pi + 0.1, 0.0), westbound)
    assert just_below.heading_error == pytest.approx(0.1)  # not -2*pi + 0.1
    just_above = project_on_route(VehiclePose(15.0, 0.0, math.pi - 0.1, 0.0), westbound)
    assert just_above.heading_error == pytest.approx(-0.1)
    backwards = project_on_route(VehiclePose(15.0, 0.0, 0.0, 0.0), westbound)
    assert abs(backwards.heading_error) == pytest.approx(math.pi)
    unwrapped_yaw = project_on_route(VehiclePose(15.0, 0.0, 4 * math.pi + 0.2, 0.0), STRAIGHT)
    assert unwrapped_yaw.heading_error == pytest.approx(0.2)


def test_projection_rejects_degenerate_routes() -> None:
    with pytest.raises(InvalidMessage) as info:
        project_on_route(VehiclePose(0, 0, 0, 0), np.array([[1.0, 1.0], [1.0, 1.0]]))
    assert info.value.reason == "degenerate_route"
    # zero-length segments inside a valid route are skipped (their direction is undefined)
    route = np.array([[0.0, 0.0], [5.0, 0.0], [5.0, 0.0], [10.0, 0.0]])
    proj = project_on_route(VehiclePose(5.0, 1.0, 0.0, 0.0), route)
    assert proj.lateral == pytest.approx(1.0) and proj.heading_error == pytest.approx(0.0)


def test_kinematic_state_layout_and_scaling() -> None:
    assert STATE_DIM == 53 and len(STATE_NAMES) == 53
    assert STATE_NAMES[:5] == ["speed", "lateral_deviation", "heading_error", "wp00_x", "wp00_y"]
    assert STATE_NAMES[-1] == "wp24_y"
    route = np.stack([np.arange(100.0), np.zeros(100)], axis=1)  # eastbound, 1 m spacing
    state = kinematic_state(VehiclePose(10.5, 0.5, 0.1, 6.0), route)
    assert state.dtype == np.float32 and state.shape == (53,)
    assert state[0] == pytest.approx(6.0 / 30)
    assert state[1] == pytest.approx(0.5 / 3.5)
    assert state[2] == pytest.approx(0.1 / math.pi)


def test_waypoints_in_vehicle_frame_rotated_90_degrees() -> None:
    # vehicle at (5, 5) facing north (yaw = +90 deg); route heads north along x = 6 (1 m to its right)
    route = np.stack([np.full(40, 6.0), np.arange(40.0)], axis=1)
    state = kinematic_state(VehiclePose(5.0, 5.0, math.pi / 2, 0.0), route)
    wp = state[3:].reshape(25, 2) * 50.0
    # first waypoint after the projection (index 5, y=5) is route[6] = (6, 6): 1 m ahead, 1 m right
    np.testing.assert_allclose(wp[0], [1.0, -1.0], atol=1e-5)
    np.testing.assert_allclose(wp[:, 0], np.arange(1.0, 26.0), atol=1e-4)  # ahead = +x
    np.testing.assert_allclose(wp[:, 1], -1.0, atol=1e-5)  # right = -y
    assert state[1] == pytest.approx(1.0 / 3.5)  # vehicle is LEFT of the route: positive


def test_waypoints_padded_with_last_point_at_route_end() -> None:
    route = np.stack([np.arange(10.0), np.zeros(10)], axis=1)  # last point (9, 0)
    state = kinematic_state(VehiclePose(6.2, 0.0, 0.0, 0.0), route)
    wp = state[3:].reshape(25, 2) * 50.0
    np.testing.assert_allclose(wp[:3, 0], [0.8, 1.8, 2.8], atol=1e-5)  # route[7], [8], [9]
    np.testing.assert_allclose(wp[2:, 0], 2.8, atol=1e-5)  # padded with the last point
    np.testing.assert_allclose(wp[:, 1], 0.0, atol=1e-6)


def test_kinematic_state_accepts_precomputed_projection() -> None:
    route = arc()
    pose = VehiclePose(3.0, 1.0, 0.3, 4.0)
    np.testing.assert_array_equal(kinematic_state(pose, route),
                                  kinematic_state(pose, route, projection=project_on_route(pose, route)))
