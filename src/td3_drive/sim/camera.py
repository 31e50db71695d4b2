"""Pinhole geometry of a car-mounted camera over highway-env's ground plane: pure functions, no drawing.

What the front camera (``SimConfig(camera="front")``) needs, kept apart so it can be tested on its own:
intrinsics from the horizontal field of view (CARLA's rule), the world -> camera transform of a camera
mounted on a vehicle, the homography that takes the ground plane into the image, projecting world
points, and clipping a polygon to the near plane.

Frames.  The world is highway-env's: ``x``, ``y`` on the ground with y *down* the screen, heading
``h`` growing clockwise as seen on the screen, so a vehicle's forward is (cos h, sin h) and its right
(-sin h, cos h); we add ``z`` = height above the ground, up.  (x, y, z) is then left-handed, exactly
CARLA's frame (x forward, y right, z up), and a camera mounted as CARLA's ``spawn_point`` x/z/pitch
sits at the same place here.  The camera frame is OpenCV's: x right, y down, z along the optical
axis.  Because the world is left-handed and the camera frame right-handed, the world -> camera
matrix has determinant -1: it is orthogonal (lengths and dot products are kept) but not a rotation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: points closer than this along the optical axis are not drawn (behind or at the lens) [m]
NEAR_M = 0.1


@dataclass(frozen=True)
class CameraMount:
    """Where a camera sits on its vehicle, as a CARLA sensor's ``spawn_point`` (pitch positive looks down)."""

    forward_m: float = 2.0  # ahead of the vehicle's centre
    height_m: float = 2.0  # above the ground
    pitch_deg: float = 0.0  # CARLA's sign is the reverse (positive pitch looks up)


@dataclass(frozen=True)
class CameraPose:
    """world -> camera: ``p_camera = rotation @ p_world + translation`` (see the module docstring)."""

    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)

    @property
    def centre(self) -> np.ndarray:
        """The camera's optical centre in the world."""
        return -self.rotation.T @ self.translation


def intrinsics(width: int, height: int, fov_deg: float) -> np.ndarray:
    """3x3 camera matrix K of a ``width`` x ``height`` image with horizontal field of view ``fov_deg``.

    As CARLA builds it: focal length W / (2 tan(fov / 2)) for both axes (square pixels), principal point
    at (W / 2, H / 2).  90 degrees gives f = W / 2.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov must be in (0, 180) degrees, got {fov_deg}")
    focal = width / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def camera_pose(position: np.ndarray, heading: float, mount: CameraMount) -> CameraPose:
    """The pose of a camera mounted on a vehicle at ``position`` (world x, y) with ``heading``."""
    forward = np.array([math.cos(heading), math.sin(heading), 0.0])
    right = np.array([-math.sin(heading), math.cos(heading), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    pitch = math.radians(mount.pitch_deg)
    # rows: the camera's axes in the world; pitching down turns the optical axis toward the ground
    rotation = np.stack([right,
                         down * math.cos(pitch) - forward * math.sin(pitch),
                         forward * math.cos(pitch) + down * math.sin(pitch)])
    centre = np.array([position[0], position[1], 0.0]) + mount.forward_m * forward
    centre[2] = mount.height_m
    return CameraPose(rotation, -rotation @ centre)


def to_camera(pose: CameraPose, points: np.ndarray) -> np.ndarray:
    """(N, 3) world points -> (N, 3) camera coordinates (z: depth along the optical axis)."""
    return np.asarray(points, dtype=float) @ pose.rotation.T + pose.translation


def project_camera(k: np.ndarray, points_camera: np.ndarray) -> np.ndarray:
    """(N, 3) camera coordinates in front of the lens -> (N, 2) pixel coordinates (column, row)."""
    p = np.asarray(points_camera, dtype=float) @ k.T
    return p[:, :2] / p[:, 2:3]


def project(k: np.ndarray, pose: CameraPose, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) world points -> ((N, 2) pixels, (N,) visible): visible = in front of the near plane.

    A point behind the camera has no pixel; its entry is NaN.
    """
    cam = to_camera(pose, np.atleast_2d(points))
    visible = cam[:, 2] > NEAR_M
    pixels = np.full((len(cam), 2), np.nan)
    if visible.any():
        pixels[visible] = project_camera(k, cam[visible])
    return pixels, visible


def ground_homography(k: np.ndarray, pose: CameraPose) -> np.ndarray:
    """3x3 homography from ground points (x, y, 1) at z = 0 to homogeneous pixels: K [r1 r2 t]."""
    return k @ np.column_stack([pose.rotation[:, 0], pose.rotation[:, 1], pose.translation])


def horizon_row(k: np.ndarray, mount: CameraMount) -> float:
    """The image row of the horizon (ground points at infinity); rows below it see the ground.

    The camera has no roll, so the horizon is one row: pitching down by p moves it up by f tan(p).
    """
    return float(k[1, 2] - k[1, 1] * math.tan(math.radians(mount.pitch_deg)))


def clip_near(polygon_camera: np.ndarray, near: float = NEAR_M) -> np.ndarray:
    """The part of a planar polygon (M, 3), camera coordinates, with depth >= ``near`` (Sutherland-Hodgman).

    Returns (K, 3), K = 0 when it lies wholly behind; a convex polygon stays convex.
    """
    points = np.asarray(polygon_camera, dtype=float)
    if np.all(points[:, 2] >= near):
        return points
    kept: list[np.ndarray] = []
    for i, a in enumerate(points):
        b = points[(i + 1) % len(points)]
        a_in, b_in = a[2] >= near, b[2] >= near
        if a_in:
            kept.append(a)
        if a_in != b_in:  # the edge crosses the plane: keep the crossing
            t = (near - a[2]) / (b[2] - a[2])
            kept.append(a + t * (b - a))
    return np.array(kept).reshape(-1, 3)
