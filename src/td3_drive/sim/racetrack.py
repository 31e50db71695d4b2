"""The embedded simulator: highway-env's racetrack, driven with CARLA controls, ROS-free.

Why highway-env's racetrack: it has what the reward and the evaluation need from
CARLA (lanes with broken and solid markings, other vehicles driving by IDM/MOBIL,
collisions, off-road) and runs at a few hundred steps/s on one CPU core (see
docs/embedded-sim.md for the measurements).

What we take from highway-env and what we do ourselves:

* road network, ego kinematics (bicycle model), other vehicles (IDM), collision
  physics: highway-env.  We step ``road.act()``/``road.step()`` directly instead of
  ``env.step()``: the env's observation/reward code (pandas) would double the cost
  and is not used.
* the camera: a chase camera *above* the car looking down, heading-up (the ego
  always points up the image, 75 % down).  The road is drawn once per track into
  a map image and each frame is one ``cv2.warpAffine`` of it plus the vehicles
  as polygons.  highway-env's own viewer draws every lane marking every frame in
  a north-up view (3x slower) and paints road and off-road the same grey.
  ``camera="front"`` is CARLA's ``rgb_front`` instead (config/objects.json: 2 m ahead
  of the centre, 2 m up, 90 degree FOV): the same map seen in perspective through
  one ``cv2.warpPerspective`` (the ground plane's homography, ``sim/camera.py``),
  sky above the horizon, other vehicles as projected 3-D boxes.
* lane invasions, off-road and the route: from the lane geometry, by ``_Track``.

Frames.  highway-env's world is y-down (screen coordinates, like CARLA's
left-handed Unreal frame): heading grows clockwise as seen on the image and
positive steering turns right.  We publish ROS REP 103 like the CARLA bridge:
``x_ros = x``, ``y_ros = -y``, ``yaw_ros = -heading``, so y points left and yaw
is counter-clockwise.  CARLA's steer is positive to the right, like highway-env's
steering angle, so steer maps with its sign unchanged.
"""
from __future__ import annotations

import math
import os

# Must precede the first pygame import (highway_env imports it): with the "dummy"
# driver highway-env's viewer silently renders all-zero frames.
os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")

from dataclasses import dataclass  # noqa: E402

import cv2  # noqa: E402
import gymnasium as gym  # noqa: E402
import highway_env  # noqa: E402,F401  (registers the racetrack ids)
import numpy as np  # noqa: E402
from highway_env import utils as hw_utils  # noqa: E402
from highway_env.road.lane import AbstractLane, LineType  # noqa: E402
from highway_env.vehicle.behavior import IDMVehicle  # noqa: E402

from td3_drive.settings import setting  # noqa: E402
from td3_drive.sim import camera as cam  # noqa: E402
from td3_drive.sim.hazards import (  # noqa: E402
    NONE,
    HazardPlan,
    HazardScript,
    check_share,
    parse_kinds,
    plan_hazard,
)

#: carla_msgs/CarlaLaneInvasionEvent constants
LANE_MARKING_OTHER = 0
LANE_MARKING_BROKEN = 1
LANE_MARKING_SOLID = 2

EGO_ACTOR_ID = 1
OTHER_ACTOR_ID_BASE = 100
#: ground truth "lead": the nearest car ahead along the route, up to this far ...
LEAD_RANGE_M = 80.0
#: ... whose centre is this close to the route: it overlaps the ego's width (two half widths, 0.5 m spare)
LEAD_LATERAL_M = 2.5

# Colours (RGB).  Road and off-road differ in luminance too, so the grayscale
# observation still sees the road edge; vehicles follow highway-env's palette.
_OFFROAD_RGB = (45, 85, 45)
_ROAD_RGB = (100, 100, 100)
_MARKING_RGB = (255, 255, 255)
_EGO_RGB = (50, 200, 0)
_OTHER_RGB = (100, 200, 255)
_CRASHED_RGB = (255, 100, 100)
_BRAKE_LIGHT_RGB = (255, 30, 30)
_SKY_RGB = (150, 190, 230)  # front camera; brighter than road and off-road in grayscale too
_BRAKE_LIGHT_DECEL = 1.0  # m/s^2: another car braking harder than this shows brake lights
_STRIPE_LENGTH_M, _STRIPE_SPACING_M = 3.0, 5.0  # highway-env's dashes
_VEHICLE_MASS_KG = 1500.0  # only to give collision impulses a CARLA-like unit (N s)
_VEHICLE_HEIGHT_M = 1.5  # highway-env's cars are flat; the front camera draws them as boxes this high
#: the front camera's boxes: faces as (corner indices, outward normal as (forward, right, up), shade);
#: corners 0-3 are the footprint (front left, front right, rear right, rear left), 4-7 the same on the roof
_BOX_FACES = (
    ((0, 1, 5, 4), (1.0, 0.0, 0.0), 0.65),  # front
    ((3, 2, 6, 7), (-1.0, 0.0, 0.0), 0.65),  # rear: darker than the sides, so the box reads as one
    ((0, 3, 7, 4), (0.0, -1.0, 0.0), 0.8),  # left
    ((1, 2, 6, 5), (0.0, 1.0, 0.0), 0.8),  # right
    ((4, 5, 6, 7), (0.0, 0.0, 1.0), 1.0),  # roof
)
_FOOTPRINT = ((1, -1), (1, 1), (-1, 1), (-1, -1))
#: brake lamps on the rear face: (right fraction of the half width from, to), height from, to [m]
_BRAKE_LAMPS = (((-0.95, -0.5), (0.55, 0.9)), ((0.5, 0.95), (0.55, 0.9)))
CAMERAS = ("chase", "front")
_FRONT_VIEW_M = 150.0  # the front camera draws vehicles this close (a car's 2 m back is ~5 px wide there at 800 px)


def _bgr(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return rgb[2], rgb[1], rgb[0]


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


@dataclass
class SimConfig:
    """Embedded simulator settings; every field is also a SimulatorNode parameter."""

    # racetrack-v1, or racetrack-v0, racetrack-large-v1, racetrack-oval-v1
    env_id: str = setting("racetrack-v1", "highway-env racetrack id")
    # chase: what the embedded simulator always had; front: CARLA's rgb_front (config/objects.json), a
    # perspective view of the same map and vehicles, for a policy that will drive CARLA's camera
    camera: str = setting("chase", "chase (top-down, heading-up) | front (perspective, as CARLA's rgb_front)")
    image_width: int = setting(160, "camera image width [px]")
    image_height: int = setting(120, "camera image height [px]")
    # 160x120 at 3 px/m sees 53 m x 40 m
    camera_scaling: float = setting(3.0, "camera resolution [px/m] (top-down chase camera)")
    # ego at 75 % of the height: 30 m ahead, 10 m behind
    camera_ego_row: float = setting(0.75, "ego position in the image as a fraction of its height")
    # the front camera's mount and lens, as config/objects.json's rgb_front (CARLA: x, z, pitch, fov)
    front_camera_x: float = setting(2.0, "front camera: ahead of the vehicle centre [m]")
    front_camera_z: float = setting(2.0, "front camera: height above the ground [m]")
    # CARLA's rgb_front has pitch 0: the horizon at mid-height, the road seen from 2.7 m ahead (90° FOV, 4:3)
    front_camera_pitch_deg: float = setting(0.0, "front camera: downward pitch [deg] (CARLA's pitch, "
                                                 "sign reversed: CARLA's positive pitch looks up)")
    front_camera_fov_deg: float = setting(90.0, "front camera: horizontal field of view [deg]")
    # the chase camera's 3 px/m map would show the road 3 m ahead as 0.33 m blocks, smeared into blurs
    front_map_scaling: float = setting(10.0, "front camera: resolution of the map it sees the road in [px/m]")
    dt: float = setting(0.05, "tick length = CARLA fixed_delta_seconds [s] (20 Hz)")
    simulation_frequency: int = setting(20, "highway-env integration rate [Hz]; substeps = dt * this")
    other_vehicles: int = setting(4, "number of IDM vehicles (exactly this many, unless the track is too crowded)")
    route_length_m: float = setting(0.0, "route length [m]; 0 = one lap of the ego's starting lane")
    route_spacing_m: float = setting(1.0, "route waypoint spacing [m]")
    # 0.5 rad front wheels: 9.5 m turning radius
    max_steer_rad: float = setting(0.5, "front wheel angle at steer = 1 [rad]")
    max_accel: float = setting(3.0, "acceleration at throttle = 1 from standstill [m/s^2], fading to 0 at max_speed")
    max_decel: float = setting(8.0, "deceleration at brake = 1 [m/s^2]")
    max_speed: float = setting(20.0, "speed where throttle stops accelerating [m/s]")
    coast_decel: float = setting(0.5, "deceleration without throttle [m/s^2]: rolling resistance, engine braking")
    initial_speed: float = setting(0.0, "ego speed at episode start [m/s] (a freshly spawned CARLA vehicle: 0)")
    # CARLA training scripts draw spawn points around the map; highway-env's start is 20-50 m into the
    # first straight, so the curves past ~100 m are rarely seen in training
    random_start: bool = setting(False, "start episodes at seeded random points of the lap, either lane "
                                        "(else highway-env's start)")
    seed: int = setting(0, "base seed; episode k uses seed + k")
    # "bridge": camera, collision and lane invasion before odometry, speedometer and vehicle status,
    # as carla-ros-bridge sends them (sensors before pseudo-sensors); "camera_last": the reverse
    publish_order: str = setting("bridge", "bridge (camera before odometry, as carla-ros-bridge) | camera_last")
    pace: str = setting("lockstep", "lockstep: tick on each control (CARLA synchronous mode, wait for control) | "
                                    "deadline: also tick when no control came within control_deadline | "
                                    "realtime: tick every dt of wall time with the latest control "
                                    "(deadline and realtime need a wall clock: the dds or ros runtime)")
    publish_clock: bool = setting(True, "publish /clock (false: another simulator of the run is its clock, as one "
                                        "CARLA server's is for every vehicle it holds)")
    control_deadline: float = setting(0.25, "pace deadline: wall seconds to wait for a control before "
                                            "ticking with the last one [s]")
    # hazards (sim/hazards.py): a scripted car in the ego's lane that only the camera shows
    hazard_share: float = setting(0.0, "share of episodes with a hazard in the ego's lane (a pure function of the "
                                       "episode seed: consecutive seeds give this share within one episode)")
    hazards: str = setting("brake_hold,slow_lead,cut_in", "hazard kinds, comma-separated: brake_hold (lead brakes "
                                                           "to a stop and holds), slow_lead, cut_in")

    @property
    def camera_mount(self) -> cam.CameraMount:
        return cam.CameraMount(self.front_camera_x, self.front_camera_z, self.front_camera_pitch_deg)

    @property
    def substeps(self) -> int:
        return max(1, int(round(self.dt * self.simulation_frequency)))


@dataclass
class SimFrame:
    """One tick of the world, in the ROS map frame (x east/forward, y left, yaw CCW)."""

    image_bgra: np.ndarray  # (H, W, 4) uint8, CARLA's bgra8
    x: float
    y: float
    yaw: float
    speed: float  # m/s, >= 0
    vx: float  # map-frame velocity, m/s
    vy: float
    ax: float  # map-frame acceleration over the last tick, m/s^2
    ay: float
    yaw_rate: float  # rad/s, CCW positive
    control: tuple[float, float, float]  # (throttle, steer, brake) applied this tick
    collision: bool  # a new contact began this tick
    other_actor_id: int  # the actor of that contact (0 if none)
    normal_impulse: tuple[float, float, float]  # approximate, N s, map frame
    lane_invasion: list[int]  # markings crossed this tick (LANE_MARKING_*)
    offroad: bool
    lane: int  # lane under the ego's centre, 0 = leftmost; -1 / num_lanes: off the road
    time_s: float  # since the episode started
    frame: int  # ticks since the episode started
    seed: int = 0
    other_vehicles: int = 0
    hazard: str = NONE  # this episode's hazard kind (sim/hazards.py)
    # ground truth, never in the observation: the nearest car ahead in the ego's path (within
    # LEAD_RANGE_M along the route, overlapping the ego's lane), bumper to bumper
    lead_gap: float = math.inf  # m; inf when there is none
    lead_speed: float = 0.0  # m/s


def sanitize_control(
    throttle: float, steer: float, brake: float, last: tuple[float, float, float]
) -> tuple[tuple[float, float, float], str]:
    """Make a CARLA control safe for the env: ('ok' | 'clamped' | 'rejected').

    Out-of-range values are clamped to CARLA's ranges; a command with any
    non-finite value is rejected and ``last`` is kept, as CARLA keeps the last
    applied control when no valid one arrives.
    """
    values = (float(throttle), float(steer), float(brake))
    if not all(math.isfinite(v) for v in values):
        return last, "rejected"
    clamped = (min(max(values[0], 0.0), 1.0), min(max(values[1], -1.0), 1.0), min(max(values[2], 0.0), 1.0))
    return clamped, ("ok" if clamped == values else "clamped")


@dataclass
class _Segment:
    """One road of the loop (from, to): its lanes sorted left to right."""

    key: tuple[str, str]
    lanes: list[AbstractLane]  # by rank, 0 = leftmost
    ids: list[int]  # highway-env lane id of each rank
    ref: AbstractLane  # lane whose lateral axis measures the cross-section
    bounds: np.ndarray  # lateral lane boundaries on ref's axis, left edge .. right edge


class _Track:
    """Lane geometry of a looped highway-env road network: ranks, locating, route, map image."""

    LON_MARGIN_M = 1.0  # segment joins in highway-env's tracks leave gaps up to ~0.5 m

    def __init__(self, network, scaling: float, margin_m: float) -> None:
        self.segments = self._loop(network)
        self.num_lanes = len(self.segments[0].lanes)
        self.rank: dict[tuple[str, str, int], int] = {}
        for seg in self.segments:
            for rank, lane_id in enumerate(seg.ids):
                self.rank[(*seg.key, lane_id)] = rank
        self.lap_lengths = [self._lap_length(r) for r in range(self.num_lanes)]
        self.scaling = scaling
        self._render_map(margin_m)  # beyond the map the camera sees off-road (warp border)

    @staticmethod
    def _loop(network) -> list[_Segment]:
        start = next(iter(network.graph))
        segments, node = [], start
        while True:
            nxt = next(iter(network.graph[node]))
            lanes = network.graph[node][nxt]
            ref = lanes[0]
            # lateral offset of every lane centre on the reference lane's axis:
            # highway-env's lateral axis points to the right of travel for every
            # lane type, so sorting by it orders lanes left to right
            offsets = [ref.local_coordinates(lane.position(lane.length / 2, 0.0))[1] for lane in lanes]
            order = list(np.argsort(offsets))
            widths = [lanes[i].width_at(0.0) for i in order]
            centres = [offsets[i] for i in order]
            bounds = [centres[0] - widths[0] / 2]
            bounds += [(centres[k] + centres[k + 1]) / 2 for k in range(len(order) - 1)]
            bounds.append(centres[-1] + widths[-1] / 2)
            segments.append(
                _Segment((node, nxt), [lanes[i] for i in order], [int(i) for i in order], ref, np.array(bounds))
            )
            node = nxt
            if node == start or len(segments) > 1000:
                break
        if node != start:
            raise ValueError("road network is not a loop")
        if len({len(s.lanes) for s in segments}) != 1:
            raise ValueError("every road of the loop must have the same number of lanes")
        return segments

    def locate(self, position: np.ndarray) -> tuple[int, float, int, bool]:
        """(segment index, longitudinal on its reference lane, lane rank, offroad) of a world point."""
        best = None
        for i, seg in enumerate(self.segments):
            s, r = seg.ref.local_coordinates(position)
            lat_excess = max(seg.bounds[0] - r, 0.0, r - seg.bounds[-1])
            lon_excess = max(-s - self.LON_MARGIN_M, 0.0, s - seg.ref.length - self.LON_MARGIN_M)
            score = lat_excess + lon_excess
            if best is None or score < best[0]:
                best = (score, i, s, r, lon_excess)
        _, i, s, r, lon_excess = best
        rank = int(np.searchsorted(self.segments[i].bounds, r)) - 1  # -1 left of the road, n right of it
        offroad = rank < 0 or rank >= self.num_lanes or lon_excess > 0.0
        return i, s, rank, offroad

    def _centreline(self, rank: int, seg_index: int, s_start: float, length: float, step: float = 0.25) -> np.ndarray:
        """Dense points along the lane of a rank, across segments, from (segment, s) for a length."""
        pts: list[np.ndarray] = []
        total, i, s0 = 0.0, seg_index, s_start
        prev = None
        for _ in range(100_000):
            lane = self.segments[i % len(self.segments)].lanes[rank]
            if prev is not None:
                # start where the previous lane ended: joins overlap or leave small gaps
                s0 = max(0.0, lane.local_coordinates(prev)[0])
            elif s0 >= lane.length:
                # a start located within the join margin past this lane's end begins on the next lane
                s0, i = s0 - lane.length, i + 1
                continue
            s_values = np.arange(s0, lane.length, step)
            for s in s_values:
                p = lane.position(float(s), 0.0)
                if prev is not None:
                    total += float(np.linalg.norm(p - prev))
                pts.append(p)
                prev = p
                if total >= length:
                    return np.array(pts)
            i += 1
        raise RuntimeError("route did not reach its length")

    def _lap_length(self, rank: int) -> float:
        total = 0.0
        prev = None
        for seg in self.segments:
            lane = seg.lanes[rank]
            s0 = 0.0 if prev is None else max(0.0, lane.local_coordinates(prev)[0])
            start = lane.position(s0, 0.0)
            if prev is not None:
                total += float(np.linalg.norm(start - prev))
            total += lane.length - s0
            prev = lane.position(lane.length, 0.0)
        # close the loop: back to where the first lane continues from the last one
        first = self.segments[0].lanes[rank]
        s_first = max(0.0, first.local_coordinates(prev)[0])
        return total + float(np.linalg.norm(first.position(s_first, 0.0) - prev)) - s_first

    def place_randomly(self, vehicle, rng: np.random.Generator) -> tuple[int, int, float]:
        """Put ``vehicle`` on a lane centre at a uniformly random point of a random lane's lap, heading along it.

        Returns (lane rank, segment index, longitudinal position on that segment's lane).
        """
        rank = int(rng.integers(self.num_lanes))
        lengths = np.array([seg.lanes[rank].length for seg in self.segments])
        u = float(rng.uniform(0.0, lengths.sum()))  # arc position over the whole lap of that lane
        seg_index = min(int(np.searchsorted(np.cumsum(lengths), u, side="right")), len(lengths) - 1)
        s = min(u - float(lengths[:seg_index].sum()), float(lengths[seg_index]) - 1e-3)
        lane = self.segments[seg_index].lanes[rank]
        vehicle.position = np.array(lane.position(s, 0.0), dtype=float)
        vehicle.heading = float(lane.heading_at(s))
        vehicle.on_state_update()
        return rank, seg_index, s

    def route(self, rank: int, seg_index: int, s_start: float, length: float, spacing: float) -> np.ndarray:
        """Waypoints every ``spacing`` metres along the lane centre (highway-env frame)."""
        dense = self._centreline(rank, seg_index, s_start, length + spacing)
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
        samples = np.arange(0.0, length + 1e-9, spacing)
        return np.stack([np.interp(samples, arc, dense[:, 0]), np.interp(samples, arc, dense[:, 1])], axis=1)

    # --- map image -----------------------------------------------------------------
    def _render_map(self, margin_m: float) -> None:
        """Road surface and markings of the whole track, drawn once (BGR, y down like the world)."""
        edges = []
        for seg in self.segments:
            for lane in seg.lanes:
                for s in np.linspace(0.0, lane.length, 16):
                    for side in (-1.0, 1.0):
                        edges.append(lane.position(float(s), side * lane.width_at(s) / 2))
        edges = np.array(edges)
        k = self.scaling
        self.origin = edges.min(axis=0) - margin_m
        size = np.ceil((edges.max(axis=0) + margin_m - self.origin) * k).astype(int)
        image = np.empty((size[1], size[0], 3), np.uint8)
        image[:] = _bgr(_OFFROAD_RGB)
        shift = 4  # cv2 fixed-point sub-pixel coordinates
        scale = k * (1 << shift)

        def pix(points: np.ndarray) -> np.ndarray:
            return np.round((points - self.origin) * scale).astype(np.int32)

        for seg in self.segments:
            for lane in seg.lanes:
                s = np.append(np.arange(0.0, lane.length, 1.0), lane.length)
                w = lane.width_at(0.0) / 2 + 0.05  # slight overlap hides seams between lanes
                left = np.array([lane.position(float(v), -w) for v in s])
                right = np.array([lane.position(float(v), w) for v in s])
                cv2.fillPoly(image, [pix(np.vstack([left, right[::-1]]))], _bgr(_ROAD_RGB), cv2.LINE_AA, shift)
        thickness = max(1, int(round(0.3 * k)))
        for seg in self.segments:
            for lane in seg.lanes:
                for side, line_type in enumerate(lane.line_types):
                    lat = (side - 0.5) * lane.width_at(0.0)
                    if line_type == LineType.STRIPED:
                        starts = np.arange(0.0, lane.length, _STRIPE_SPACING_M)
                        for s0 in starts:
                            s1 = min(s0 + _STRIPE_LENGTH_M, lane.length)
                            line = np.array([lane.position(float(v), lat) for v in np.linspace(s0, s1, 4)])
                            cv2.polylines(image, [pix(line)], False, _bgr(_MARKING_RGB), thickness, cv2.LINE_AA, shift)
                    elif line_type in (LineType.CONTINUOUS, LineType.CONTINUOUS_LINE):
                        s = np.append(np.arange(0.0, lane.length, 1.0), lane.length)
                        line = np.array([lane.position(float(v), lat) for v in s])
                        cv2.polylines(image, [pix(line)], False, _bgr(_MARKING_RGB), thickness, cv2.LINE_AA, shift)
        self.map_bgr = image


class _RoutePath:
    """Arc length along a polyline (the ego's route and beyond it), searched within a window."""

    def __init__(self, points: np.ndarray) -> None:
        self.points = np.asarray(points, dtype=float)
        self.segments = np.diff(self.points, axis=0)
        self.lengths = np.maximum(np.linalg.norm(self.segments, axis=1), 1e-9)
        self.arc = np.concatenate([[0.0], np.cumsum(self.lengths)])

    def project(self, point: np.ndarray, s_min: float, s_max: float) -> tuple[float, float]:
        """(arc length, distance) of the point of the path nearest to ``point`` with arc length in the window.

        The window keeps a route that passes near itself (a lap) from snapping to its other pass.
        """
        n = len(self.segments)
        i0 = min(max(int(np.searchsorted(self.arc, s_min, side="right")) - 1, 0), n - 1)
        i1 = min(max(int(np.searchsorted(self.arc, s_max, side="left")), i0 + 1), n)
        start, seg, length = self.points[i0:i1], self.segments[i0:i1], self.lengths[i0:i1]
        t = np.clip(np.einsum("ij,ij->i", point - start, seg) / length ** 2, 0.0, 1.0)
        distance = np.linalg.norm(point - (start + t[:, None] * seg), axis=1)
        k = int(np.argmin(distance))
        return float(self.arc[i0 + k] + t[k] * length[k]), float(distance[k])

    def point_at(self, s: float) -> np.ndarray:
        return np.array([np.interp(s, self.arc, self.points[:, 0]), np.interp(s, self.arc, self.points[:, 1])])


class _HazardCar(IDMVehicle):
    """An IDM car that keeps its lane until told otherwise, and whose acceleration the hazard script may force."""

    forced_acceleration: float | None = None

    def act(self, action: dict | None = None) -> None:
        super().act()  # IDM behind whatever is ahead of it, lane keeping
        if self.forced_acceleration is not None and not self.crashed:
            self.action["acceleration"] = float(self.forced_acceleration)


def _vehicle_rgb(vehicle, ego) -> tuple[int, int, int]:
    return _EGO_RGB if vehicle is ego else (_CRASHED_RGB if vehicle.crashed else _OTHER_RGB)


def _shade(rgb: tuple[int, int, int], brightness: float) -> tuple[int, int, int]:
    return tuple(min(255, int(x * brightness)) for x in rgb)


def _body_points(vehicle, fractions, heights=None) -> np.ndarray:
    """(N, 3) world points of a vehicle's body: (a, b) = fractions of its half length ahead and half width
    to the right of its centre, at ``heights`` [m] (default: on the ground)."""
    vf = np.array([math.cos(vehicle.heading), math.sin(vehicle.heading)])
    vr = np.array([-vf[1], vf[0]])
    half_l, half_w = vehicle.LENGTH / 2, vehicle.WIDTH / 2
    ground = np.array([vehicle.position + a * half_l * vf + b * half_w * vr for a, b in fractions])
    z = np.zeros(len(ground)) if heights is None else np.asarray(heights, dtype=float)
    return np.column_stack([ground, z])


def _braking(vehicle) -> bool:
    action = vehicle.action if isinstance(vehicle.action, dict) else {}
    return float(action.get("acceleration", 0.0)) < -_BRAKE_LIGHT_DECEL and vehicle.speed > 0.1


class RacetrackSim:
    """highway-env's racetrack behind a CARLA-like interface: reset(seed), step(throttle, steer, brake)."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        c = self.config
        if c.dt <= 0 or c.image_width <= 0 or c.image_height <= 0 or min(c.camera_scaling, c.front_map_scaling) <= 0:
            raise ValueError("dt, image size, camera_scaling and front_map_scaling must be positive")
        if c.camera not in CAMERAS:
            raise ValueError(f"camera must be one of {CAMERAS}, got {c.camera!r}")
        if c.front_camera_z <= 0:
            raise ValueError("front_camera_z must be positive: the camera looks at the ground from above")
        self._intrinsics = cam.intrinsics(c.image_width, c.image_height, c.front_camera_fov_deg)
        # Everything but the road network and the ego is ours: no env observation
        # (reset computes one, so pick the cheapest), no other vehicles from the
        # env (we place exactly `other_vehicles`), ego controlled by acceleration
        # and steering angle (ContinuousAction -> kinematic Vehicle).
        env_config = {
            "observation": {"type": "Kinematics", "vehicles_count": 1},
            "action": {"type": "ContinuousAction", "longitudinal": True, "lateral": True},
            "other_vehicles": 0,
            "simulation_frequency": c.substeps / c.dt,
            "policy_frequency": 1.0 / c.dt,
            "terminate_off_road": False,
            "duration": 1e12,
        }
        self._hazard_kinds = parse_kinds(c.hazards)
        check_share(c.hazard_share)  # refused at construction, not at the first reset
        self.env = gym.make(c.env_id, config=env_config).unwrapped
        self._hazard = HazardPlan()
        self._hazard_car: _HazardCar | None = None
        self._track: _Track | None = None
        self._route = np.zeros((0, 2))
        self._actor_ids: dict[int, int] = {}
        self._contacts: set[int] = set()
        self._frame = 0
        self._seed = 0
        self._control = (0.0, 0.0, 0.0)

    # --- public API ------------------------------------------------------------------
    @property
    def num_lanes(self) -> int:
        return self._require_track().num_lanes

    @property
    def lap_length_m(self) -> float:
        """Lap length of the ego's starting lane."""
        return self._require_track().lap_lengths[self._start_rank]

    def reset(self, seed: int) -> SimFrame:
        """Start an episode fully determined by ``seed`` (not by earlier episodes)."""
        c = self.config
        self._seed = int(seed)
        self.env.reset(seed=self._seed)  # rebuilds road and ego from the seeded env RNG
        road, ego = self.env.road, self.env.vehicle
        if self._track is None:
            # the road network is the same at every reset: geometry and map are built once
            scaling = c.front_map_scaling if c.camera == "front" else c.camera_scaling
            self._track = _Track(road.network, scaling, margin_m=5.0)
        ego.speed = float(c.initial_speed)
        ego.color = _EGO_RGB
        if c.random_start:
            self._track.place_randomly(ego, np.random.default_rng([self._seed, 2]))
        seg, _, rank, offroad = self._track.locate(ego.position)
        self._start_rank = min(max(rank, 0), self._track.num_lanes - 1)
        length = c.route_length_m if c.route_length_m > 0 else self._track.lap_lengths[self._start_rank]
        lane = self._track.segments[seg].lanes[self._start_rank]
        s_lane = lane.local_coordinates(ego.position)[0]
        # the route, and LEAD_RANGE_M beyond it: a car just past the goal is still in the ego's way
        path = self._track.route(self._start_rank, seg, max(0.0, s_lane), length + LEAD_RANGE_M, c.route_spacing_m)
        self._route = path[: len(np.arange(0.0, length + 1e-9, c.route_spacing_m))]
        self._path = _RoutePath(path)
        self._ego_s = self._path.project(ego.position, 0.0, 2.0 * c.route_spacing_m)[0]
        del road.vehicles[1:]
        self._hazard = plan_hazard(self._seed, c.hazard_share, self._hazard_kinds)
        self._script = HazardScript(self._hazard)
        self._hazard_car = self._place_hazard(self._hazard)
        self._place_other_vehicles(np.random.default_rng([self._seed, 1]))
        self._actor_ids = {id(ego): EGO_ACTOR_ID}
        for k, v in enumerate(road.vehicles[1:] + road.objects):
            self._actor_ids[id(v)] = OTHER_ACTOR_ID_BASE + k
        self._contacts = set()
        self._frame = 0
        self._control = (0.0, 0.0, 0.0)
        self._rank = rank
        self._heading = float(ego.heading)
        self._velocity = self._map_velocity()
        return self._make_frame(np.zeros(2), 0.0, (False, 0, (0.0, 0.0, 0.0)), [], rank, offroad)

    def step(self, throttle: float, steer: float, brake: float) -> SimFrame:
        """Advance one tick (``dt``) under a CARLA control; values are sanitised first."""
        c = self.config
        (throttle, steer, brake), _ = sanitize_control(throttle, steer, brake, self._control)
        self._control = (throttle, steer, brake)
        road, ego = self.env.road, self.env.vehicle
        v = max(float(ego.speed), 0.0)
        accel = throttle * c.max_accel * max(0.0, 1.0 - v / c.max_speed) - brake * c.max_decel
        accel -= c.coast_decel if v > 0.0 else 0.0
        accel = max(accel, -v / c.dt)  # brakes stop the car; no reverse gear here
        ego.crashed = False  # crashed would make highway-env brake the ego forever; we keep it drivable
        ego.act({"acceleration": accel, "steering": steer * c.max_steer_rad})
        self._script_hazard()
        h = c.dt / c.substeps
        for _ in range(c.substeps):
            road.act()
            for other in road.vehicles[1:]:  # IDM brakes past zero behind a stopped car: no reverse gear
                if isinstance(other.action, dict) and "acceleration" in other.action:
                    other.action["acceleration"] = max(other.action["acceleration"], -max(other.speed, 0.0) / h)
            road.step(h)
        if ego.speed < 0.0:  # float round-off of the stop-at-zero clamp above
            ego.speed = 0.0
        self._frame += 1
        self._ego_s = self._path.project(ego.position, self._ego_s - 5.0, self._ego_s + 10.0)[0]
        contact = self._new_contact(h)
        seg, s, rank, offroad = self._track.locate(ego.position)
        invasion = self._crossings(self._rank, rank)
        self._rank = rank
        velocity = self._map_velocity()
        accel_map = (velocity - self._velocity) / c.dt
        self._velocity = velocity
        yaw_rate = -_wrap(float(ego.heading) - self._heading) / c.dt
        self._heading = float(ego.heading)
        return self._make_frame(accel_map, yaw_rate, contact, invasion, rank, offroad)

    def route(self) -> np.ndarray:
        """(N, 2) waypoints along the centre of the ego's starting lane, map frame, from the ego's start."""
        return np.stack([self._route[:, 0], -self._route[:, 1]], axis=1)

    def render(self) -> np.ndarray:
        """The camera image of the current state, (H, W, 4) uint8 BGRA."""
        image = self._render_front() if self.config.camera == "front" else self._render_chase()
        return cv2.cvtColor(image, cv2.COLOR_BGR2BGRA)

    def _render_chase(self) -> np.ndarray:
        """Top-down, heading-up: the map turned and shifted by one affine warp, vehicles as rectangles (BGR)."""
        c = self.config
        track = self._require_track()
        ego = self.env.vehicle
        k = track.scaling
        h = float(ego.heading)
        f = np.array([math.cos(h), math.sin(h)])  # forward, world (y down) = map pixel axes
        r = np.array([-math.sin(h), math.cos(h)])  # right of forward
        e = (ego.position - track.origin) * k  # ego in map pixels
        cx, cy = c.image_width / 2.0, c.camera_ego_row * c.image_height
        # output pixel (u, v) -> map pixel: e + (u - cx) r - (v - cy) f
        m = np.array([
            [r[0], -f[0], e[0] - r[0] * cx + f[0] * cy],
            [r[1], -f[1], e[1] - r[1] * cx + f[1] * cy],
        ])
        image = cv2.warpAffine(
            track.map_bgr, m, (c.image_width, c.image_height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
            borderValue=_bgr(_OFFROAD_RGB),
        )
        view_m = math.hypot(c.image_width, c.image_height) / k
        shift = 4
        scale = 1 << shift
        for vehicle in self.env.road.vehicles:
            if np.linalg.norm(vehicle.position - ego.position) > view_m:
                continue
            rgb = _vehicle_rgb(vehicle, ego)
            nose = 1.0 - 2.4 / vehicle.LENGTH  # windscreen strip: shows which way a car points
            parts = [(_body_points(vehicle, _FOOTPRINT), rgb),
                     (_body_points(vehicle, ((1, -1), (1, 1), (nose, 1), (nose, -1))), _shade(rgb, 1 / 0.68))]
            if vehicle is not ego and _braking(vehicle):
                rear = -1.0 + 2.0 / vehicle.LENGTH  # a 1 m strip at the back
                parts.append((_body_points(vehicle, ((rear, -1), (rear, 1), (-1, 1), (-1, -1))), _BRAKE_LIGHT_RGB))
            for poly, colour in parts:
                d = poly[:, :2] - ego.position
                pts = np.stack([cx + k * (d @ r), cy - k * (d @ f)], axis=1)
                cv2.fillConvexPoly(image, np.round(pts * scale).astype(np.int32), _bgr(colour), cv2.LINE_AA, shift)
        return image

    def _render_front(self) -> np.ndarray:
        """CARLA's rgb_front: the map through the ground plane's homography, sky, vehicles as boxes (BGR)."""
        c = self.config
        track = self._require_track()
        ego = self.env.vehicle
        k_matrix, mount = self._intrinsics, c.camera_mount
        pose = cam.camera_pose(ego.position, float(ego.heading), mount)
        width, height = c.image_width, c.image_height
        image = np.empty((height, width, 3), np.uint8)
        # rows at and above the horizon see no ground: the homography would fold the ground behind the
        # camera onto them, so they are sky and only the rows below are warped
        first_ground_row = min(max(int(math.floor(cam.horizon_row(k_matrix, mount))) + 1, 0), height)
        image[:first_ground_row] = _bgr(_SKY_RGB)
        if first_ground_row < height:
            map_to_world = np.array([[1.0 / track.scaling, 0.0, track.origin[0]],
                                     [0.0, 1.0 / track.scaling, track.origin[1]], [0.0, 0.0, 1.0]])
            rows_below = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -first_ground_row], [0.0, 0.0, 1.0]])
            image[first_ground_row:] = cv2.warpPerspective(
                track.map_bgr, rows_below @ cam.ground_homography(k_matrix, pose) @ map_to_world,
                (width, height - first_ground_row), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                borderValue=_bgr(_OFFROAD_RGB))
        centre = pose.centre
        others = [v for v in self.env.road.vehicles
                  if v is not ego and np.linalg.norm(v.position - centre[:2]) < _FRONT_VIEW_M]
        # far to near: a nearer car is drawn later and covers the farther ones behind it
        for vehicle in sorted(others, key=lambda v: -float(np.linalg.norm(v.position - centre[:2]))):
            self._draw_box(image, vehicle, pose, centre)
        return image

    def _draw_box(self, image: np.ndarray, vehicle, pose: cam.CameraPose, centre: np.ndarray) -> None:
        """One vehicle as a 3-D box: its faces that look at the camera, clipped to the near plane."""
        footprint = _body_points(vehicle, _FOOTPRINT)
        corners = np.vstack([footprint, footprint + [0.0, 0.0, _VEHICLE_HEIGHT_M]])
        corners_camera = cam.to_camera(pose, corners)
        if np.all(corners_camera[:, 2] < cam.NEAR_M):
            return  # wholly behind the camera
        rgb = _vehicle_rgb(vehicle, self.env.vehicle)
        vf = np.array([math.cos(vehicle.heading), math.sin(vehicle.heading), 0.0])
        vr = np.array([-vf[1], vf[0], 0.0])
        up = np.array([0.0, 0.0, 1.0])
        for indices, (n_f, n_r, n_u), shade in _BOX_FACES:
            if np.dot(n_f * vf + n_r * vr + n_u * up, centre - corners[indices[0]]) <= 0.0:
                continue  # faces away: a convex box's visible faces never overlap, so no depth order is needed
            self._fill_projected(image, corners_camera[list(indices)], _shade(rgb, shade))
            if n_f < 0 and _braking(vehicle):
                for (b0, b1), (z0, z1) in _BRAKE_LAMPS:
                    lamp = _body_points(vehicle, ((-1, b0), (-1, b1), (-1, b1), (-1, b0)), (z0, z0, z1, z1))
                    self._fill_projected(image, cam.to_camera(pose, lamp), _BRAKE_LIGHT_RGB)

    def _fill_projected(self, image: np.ndarray, polygon_camera: np.ndarray, rgb: tuple[int, int, int]) -> None:
        clipped = cam.clip_near(polygon_camera)
        if len(clipped) < 3:
            return
        shift = 4
        pts = cam.project_camera(self._intrinsics, clipped) * (1 << shift)
        # a point just past the near plane projects far outside the image: keep cv2's fixed point in range
        pts = np.clip(pts, -(1 << 26), 1 << 26)
        cv2.fillConvexPoly(image, np.round(pts).astype(np.int32), _bgr(rgb), cv2.LINE_AA, shift)

    def lane_lateral(self) -> float:
        """The ego's lateral offset from its starting lane's centre on the current road, + = left (ROS)."""
        track = self._require_track()
        seg, _, _, _ = track.locate(self.env.vehicle.position)
        lane = track.segments[seg].lanes[self._start_rank]
        return -float(lane.local_coordinates(self.env.vehicle.position)[1])

    def close(self) -> None:
        self.env.close()

    # --- internals ---------------------------------------------------------------------
    def _require_track(self) -> _Track:
        if self._track is None:
            raise RuntimeError("call reset(seed) first")
        return self._track

    def _place_hazard(self, plan: HazardPlan) -> "_HazardCar | None":
        """The hazard car ``start_gap_m`` ahead of the ego along its route: in its lane, or beside it (cut_in)."""
        if plan.kind == NONE:
            return None
        track, road, ego = self._require_track(), self.env.road, self.env.vehicle
        s = self._ego_s + ego.LENGTH + plan.start_gap_m  # centre to centre: half a car each, plus the gap
        point = self._path.point_at(s)
        seg_index, _, _, _ = track.locate(point)
        rank = self._start_rank
        if plan.kind == "cut_in":  # the adjacent lane, to the right where there is one
            rank = rank + 1 if rank + 1 < track.num_lanes else rank - 1
        seg = track.segments[seg_index]
        lane = seg.lanes[rank]
        longitudinal = min(max(float(lane.local_coordinates(point)[0]), 0.0), lane.length)
        car = _HazardCar.make_on_lane(road, (*seg.key, seg.ids[rank]), longitudinal=longitudinal, speed=plan.speed)
        car.target_speed, car.enable_lane_change = plan.speed, False
        road.vehicles.append(car)
        self._hazard_s = self._path.project(car.position, s - 5.0, s + 5.0)[0]
        return car

    def _script_hazard(self) -> None:
        """Tell the hazard car what to do this tick (brake, hold, change into the ego's lane)."""
        car = self._hazard_car
        if car is None:
            return
        ego = self.env.vehicle
        self._hazard_s = self._path.project(car.position, self._hazard_s - 5.0, self._hazard_s + 10.0)[0]
        gap = self._hazard_s - self._ego_s - (ego.LENGTH + car.LENGTH) / 2
        car.forced_acceleration, change_lane = self._script.update(self.config.dt, gap, float(ego.speed),
                                                                   float(car.speed))
        if change_lane:
            key = car.lane_index[:2]
            seg = next(s for s in self._require_track().segments if s.key == key)
            car.target_lane_index = (*key, seg.ids[self._start_rank])

    def lead(self) -> tuple[float, float]:
        """Ground truth: (gap [m], speed [m/s]) of the nearest car ahead in the ego's path; (inf, 0) if none.

        A car is in the path when its centre is within LEAD_LATERAL_M of the route (the two cars
        overlap sideways) and ahead of the ego by at most LEAD_RANGE_M; the gap is bumper to bumper.
        """
        ego = self.env.vehicle
        best = (math.inf, 0.0)
        for other in self.env.road.vehicles[1:]:
            if np.linalg.norm(other.position - ego.position) > LEAD_RANGE_M + ego.LENGTH:
                continue
            s, lateral = self._path.project(other.position, self._ego_s - ego.LENGTH,
                                            self._ego_s + LEAD_RANGE_M + ego.LENGTH)
            gap = s - self._ego_s - (ego.LENGTH + other.LENGTH) / 2
            if s > self._ego_s and lateral < LEAD_LATERAL_M and gap < best[0]:
                best = (float(gap), float(other.speed))
        return best

    def _place_other_vehicles(self, rng: np.random.Generator) -> None:
        """Exactly `other_vehicles` IDM cars on random lanes, >= 25 m from the ego and 15 m from any car."""
        road = self.env.road
        graph = road.network.graph
        keys = [(a, b, i) for a, tos in graph.items() for b, lanes in tos.items() for i in range(len(lanes))]
        for _ in range(self.config.other_vehicles):
            for _attempt in range(50):
                lane_index = keys[int(rng.integers(len(keys)))]
                lane = road.network.get_lane(lane_index)
                longitudinal, speed = float(rng.uniform(0.0, lane.length)), float(rng.uniform(6.0, 9.0))
                vehicle = IDMVehicle.make_on_lane(road, lane_index, longitudinal=longitudinal, speed=speed)
                gaps = [np.linalg.norm(vehicle.position - v.position) for v in road.vehicles]
                if gaps[0] >= 25.0 and min(gaps) >= 15.0:
                    road.vehicles.append(vehicle)
                    break

    def _map_velocity(self) -> np.ndarray:
        ego = self.env.vehicle
        steering = float(ego.action.get("steering", 0.0)) if isinstance(ego.action, dict) else 0.0
        beta = math.atan(0.5 * math.tan(steering))  # highway-env's slip angle: motion is along heading + beta
        angle = float(ego.heading) + beta
        return np.array([ego.speed * math.cos(angle), -ego.speed * math.sin(angle)])

    def _new_contact(self, h: float) -> tuple[bool, int, tuple[float, float, float]]:
        """First new contact of the ego this tick, with highway-env's own criterion."""
        ego = self.env.vehicle
        touching: dict[int, object] = {}
        for other in self.env.road.vehicles[1:] + self.env.road.objects:
            reach = (ego.diagonal + other.diagonal) / 2 + (abs(ego.speed) + abs(other.speed)) * h
            if np.linalg.norm(other.position - ego.position) > reach:  # highway-env's cheap pre-check
                continue
            intersecting, will_intersect, _ = hw_utils.are_polygons_intersecting(
                ego.polygon(), other.polygon(), ego.velocity * h, other.velocity * h
            )
            if intersecting or will_intersect:
                touching[id(other)] = other
        if ego.crashed and not touching:
            # highway-env pushed the cars apart already: blame the nearest one
            others = self.env.road.vehicles[1:] + self.env.road.objects
            if others:
                nearest = min(others, key=lambda o: np.linalg.norm(o.position - ego.position))
                touching[id(nearest)] = nearest
        new = [key for key in touching if key not in self._contacts]
        self._contacts = set(touching)
        if not new:
            return False, 0, (0.0, 0.0, 0.0)
        other = touching[new[0]]
        dv = np.asarray(other.velocity, float) - np.asarray(ego.velocity, float)
        impulse = (_VEHICLE_MASS_KG * dv[0], -_VEHICLE_MASS_KG * dv[1], 0.0)
        return True, self._actor_ids.get(new[0], OTHER_ACTOR_ID_BASE - 1), tuple(float(x) for x in impulse)

    def _crossings(self, before: int, after: int) -> list[int]:
        """Markings between lane slots: the road edges are solid, lines between lanes broken."""
        n = self._require_track().num_lanes
        if before == after:
            return []
        step = 1 if after > before else -1
        crossed = []
        for slot in range(before, after, step):
            boundary = slot + 1 if step > 0 else slot  # boundary j separates slots j-1 and j
            crossed.append(LANE_MARKING_SOLID if boundary in (0, n) else LANE_MARKING_BROKEN)
        return crossed

    def _make_frame(self, accel_map, yaw_rate, contact, invasion, rank, offroad) -> SimFrame:
        ego = self.env.vehicle
        collision, other_id, impulse = contact
        lead_gap, lead_speed = self.lead()
        return SimFrame(
            image_bgra=self.render(),
            x=float(ego.position[0]),
            y=-float(ego.position[1]),
            yaw=_wrap(-float(ego.heading)),
            speed=float(ego.speed),
            vx=float(self._velocity[0]),
            vy=float(self._velocity[1]),
            ax=float(accel_map[0]),
            ay=float(accel_map[1]),
            yaw_rate=float(yaw_rate),
            control=self._control,
            collision=collision,
            other_actor_id=other_id,
            normal_impulse=impulse,
            lane_invasion=invasion,
            offroad=bool(offroad),
            lane=int(rank),
            time_s=self._frame * self.config.dt,
            frame=self._frame,
            seed=self._seed,
            other_vehicles=len(self.env.road.vehicles) - 1,
            hazard=self._hazard.kind,
            lead_gap=lead_gap,
            lead_speed=lead_speed,
        )
