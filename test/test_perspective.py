"""The front camera (CARLA's rgb_front): its geometry on its own, then what the simulator draws with it."""
from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest

from td3_drive import topics as T
from td3_drive.app import config
from td3_drive.driving.observation import to_gray84
from td3_drive.runtime.local import LocalRuntime
from td3_drive.sim import ENV_ID
from td3_drive.sim import camera as cam
from td3_drive.sim.racetrack import RacetrackSim, SimConfig

from support import Recorder

TP = T.Topics()
# config/objects.json's rgb_front: 2 m ahead of the centre, 2 m up, pitch 0, 800x600, 90 degree FOV
MOUNT = cam.CameraMount(forward_m=2.0, height_m=2.0, pitch_deg=0.0)
CARLA_SIZE = {"image_width": 800, "image_height": 600}


def _forward(heading: float) -> np.ndarray:
    return np.array([math.cos(heading), math.sin(heading)])


def _right(heading: float) -> np.ndarray:
    """Right of travel in highway-env's y-down world (the chase view's image right, too)."""
    return np.array([-math.sin(heading), math.cos(heading)])


# ---------------------------------------------------------------------------- geometry
def test_a_90_degree_lens_has_a_focal_length_of_half_the_width():
    for width, height in ((800, 600), (160, 120)):
        k = cam.intrinsics(width, height, 90.0)
        assert k[0, 0] == pytest.approx(width / 2) and k[1, 1] == pytest.approx(width / 2), "square pixels"
        assert (k[0, 2], k[1, 2]) == (width / 2, height / 2)
    assert cam.intrinsics(800, 600, 60.0)[0, 0] == pytest.approx(400 / math.tan(math.radians(30.0)))
    with pytest.raises(ValueError):
        cam.intrinsics(800, 600, 180.0)


@pytest.mark.parametrize("heading", [0.0, 0.7, -2.5])
def test_ground_points_land_on_their_pixels(heading):
    k = cam.intrinsics(800, 600, 90.0)
    f, cx, cy = k[0, 0], k[0, 2], k[1, 2]
    ego = np.array([30.0, -12.0])
    pose = cam.camera_pose(ego, heading, MOUNT)
    lens = ego + MOUNT.forward_m * _forward(heading)
    np.testing.assert_allclose(pose.centre, [*lens, MOUNT.height_m], atol=1e-12)
    ahead = lens + 10.0 * _forward(heading)
    points = np.array([
        [*ahead, 0.0],  # 10 m straight ahead on the road: below the centre by f * height / distance
        [*(ahead + 2.0 * _right(heading)), 0.0],  # 2 m right of it
        [*(ahead - 2.0 * _right(heading)), 0.0],  # 2 m left of it
        [*ahead, MOUNT.height_m],  # level with the lens: on the horizon
        [*(lens - 5.0 * _forward(heading)), 0.0],  # behind the camera
    ])
    pixels, visible = cam.project(k, pose, points)
    assert visible.tolist() == [True, True, True, True, False]
    np.testing.assert_allclose(pixels[0], [cx, cy + f * MOUNT.height_m / 10.0])
    np.testing.assert_allclose(pixels[1], [cx + f * 2.0 / 10.0, pixels[0][1]])
    np.testing.assert_allclose(pixels[2], [cx - f * 2.0 / 10.0, pixels[0][1]])
    np.testing.assert_allclose(pixels[3], [cx, cy])
    assert np.isnan(pixels[4]).all(), "a point behind the camera has no pixel"


def test_the_ground_homography_projects_as_the_camera_does():
    k = cam.intrinsics(160, 120, 90.0)
    pitched = cam.CameraMount(2.0, 2.0, 8.0)
    pose = cam.camera_pose(np.array([5.0, 7.0]), 1.1, pitched)
    rng = np.random.default_rng(0)
    ground = np.column_stack([rng.uniform(-40, 40, (50, 2)) + [5.0, 7.0], np.zeros(50)])
    pixels, visible = cam.project(k, pose, ground)
    assert 0 < visible.sum() < 50
    homogeneous = np.column_stack([ground[:, :2], np.ones(50)]) @ cam.ground_homography(k, pose).T
    np.testing.assert_allclose(homogeneous[visible, :2] / homogeneous[visible, 2:], pixels[visible], atol=1e-9)
    # the camera frame is right-handed, the world (as CARLA's) left-handed: orthogonal, determinant -1
    np.testing.assert_allclose(pose.rotation @ pose.rotation.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(pose.rotation) == pytest.approx(-1.0)
    # pitching down raises the horizon by f tan(pitch); ground far ahead lands just below it
    horizon = cam.horizon_row(k, pitched)
    assert horizon == pytest.approx(60.0 - 80.0 * math.tan(math.radians(8.0)))
    far = np.array([[*(np.array([5.0, 7.0]) + 1e5 * _forward(1.1)), 0.0]])
    row = cam.project(k, pose, far)[0][0, 1]
    assert horizon < row < horizon + 0.01


def test_clipping_keeps_only_what_is_in_front_of_the_near_plane():
    quad = np.array([[-1.0, 0.0, -2.0], [1.0, 0.0, -2.0], [1.0, 0.0, 4.0], [-1.0, 0.0, 4.0]])
    clipped = cam.clip_near(quad)
    assert len(clipped) == 4 and clipped[:, 2].min() == pytest.approx(cam.NEAR_M)
    assert set(map(tuple, quad[2:])) <= set(map(tuple, clipped)), "the part in front is kept as it was"
    assert len(cam.clip_near(quad - [0.0, 0.0, 10.0])) == 0
    np.testing.assert_array_equal(cam.clip_near(quad + [0.0, 0.0, 10.0]), quad + [0.0, 0.0, 10.0])


# ---------------------------------------------------------------------------- rendering
@pytest.fixture(scope="module")
def front_sim():
    """CARLA's camera on a simulator with one car (the hazard machinery's lead), which the tests move around."""
    sim = RacetrackSim(SimConfig(camera="front", random_start=True, other_vehicles=0, hazard_share=1.0,
                                 hazards="slow_lead", **CARLA_SIZE))
    sim.reset(3)
    return sim


def _move_lead(sim: RacetrackSim, ahead_m: float) -> None:
    """The lead car ``ahead_m`` in front of the ego's centre along its heading, pointing the same way."""
    ego, car = sim.env.vehicle, sim._hazard_car
    car.position = ego.position + ahead_m * _forward(ego.heading)
    car.heading = ego.heading
    car.on_state_update()


def _without_the_lead(sim: RacetrackSim) -> np.ndarray:
    vehicles = sim.env.road.vehicles
    kept = vehicles[:]
    vehicles[:] = vehicles[:1]
    try:
        return sim.render()
    finally:
        vehicles[:] = kept


def test_the_front_image_has_sky_above_the_horizon_and_road_ahead_below_it(front_sim):
    image = _without_the_lead(front_sim)
    assert image.shape == (600, 800, 4) and image.dtype == np.uint8
    k = cam.intrinsics(800, 600, 90.0)
    horizon = int(cam.horizon_row(k, MOUNT))
    sky = image[: horizon + 1, :, :3].reshape(-1, 3)
    assert (sky == sky[0]).all(), "plain sky down to the horizon row"
    ground = image[horizon + 1:, :, :3].reshape(-1, 3)
    assert not (ground == sky[0]).all(axis=1).any(), "no sky below the horizon"
    # 5 m ahead of the lens, on the lane centre the ego starts on: road grey, not grass or marking
    row = int(round(k[1, 2] + k[1, 1] * MOUNT.height_m / 5.0))
    b, g, r = (int(x) for x in image[row, 400, :3])
    assert abs(b - g) <= 3 and abs(g - r) <= 3 and 80 <= g <= 120, (b, g, r)
    # the road is darker than the sky and lighter than the grass in the grey image the policy sees
    grey = to_gray84(image, "bgra8")
    assert grey[5, 42] > grey[80, 42]


def test_a_car_ahead_is_drawn_as_its_projected_box_and_a_car_behind_is_not_drawn(front_sim):
    sim = front_sim
    empty = _without_the_lead(sim)
    _move_lead(sim, 15.0)
    with_car = sim.render()
    changed = np.argwhere(np.any(with_car != empty, axis=2))
    assert len(changed) > 1000
    # the changed pixels lie within the projection of the car's 3-D box (1 px of antialiasing around it)
    car = sim._hazard_car
    corners = [[*(car.position + a * car.LENGTH / 2 * _forward(car.heading) + b * car.WIDTH / 2
                  * _right(car.heading)), z] for a in (-1, 1) for b in (-1, 1) for z in (0.0, 1.5)]
    k = cam.intrinsics(800, 600, 90.0)
    pixels, visible = cam.project(k, cam.camera_pose(sim.env.vehicle.position, sim.env.vehicle.heading, MOUNT),
                                  np.array(corners))
    assert visible.all()
    (u0, v0), (u1, v1) = pixels.min(axis=0), pixels.max(axis=0)
    assert u0 - 1 <= changed[:, 1].min() and changed[:, 1].max() <= u1 + 1
    assert v0 - 1 <= changed[:, 0].min() and changed[:, 0].max() <= v1 + 1
    assert u0 < 400 < u1, "straight ahead: across the image centre"
    assert (u1 - u0) * (v1 - v0) < 2 * len(changed), "it fills its box, not a sliver of it"
    _move_lead(sim, -12.0)
    np.testing.assert_array_equal(sim.render(), empty)


def test_a_braking_car_ahead_shows_its_brake_lights(front_sim):
    sim = front_sim
    _move_lead(sim, 12.0)
    car = sim._hazard_car
    car.speed = 0.8 * car.target_speed  # below its desired speed: IDM alone accelerates

    def red_pixels() -> int:
        b, g, r = (sim.render()[..., i].astype(int) for i in range(3))
        return int(((r > 200) & (g < 80) & (b < 80)).sum())

    car.forced_acceleration = None
    car.act()
    assert red_pixels() == 0
    car.forced_acceleration = -5.0
    car.act()
    assert red_pixels() > 20
    _move_lead(sim, -12.0)  # behind the camera: the car is not drawn at all, lamps included
    assert red_pixels() == 0
    car.forced_acceleration = None


def test_the_camera_option_is_checked():
    with pytest.raises(ValueError, match="camera"):
        RacetrackSim(SimConfig(camera="fisheye"))


# ---------------------------------------------------------------------------- the pipeline
def test_the_simulator_node_publishes_carla_sized_frames_that_the_preprocessor_reads():
    """``--set`` reaches the simulator node; the bridge's topic carries the 800x600 frame, decoded to 84x84."""
    from td3_drive.nodes.preprocessor import CameraPreprocessorNode
    from td3_drive.sim.node import SimulatorNode

    params = config.compose("train", overrides=["simulator.camera=front", "simulator.image_width=800",
                                                "simulator.image_height=600"])
    rt = LocalRuntime(params)
    sim = SimulatorNode(rt.context("simulator"))
    assert sim.config.camera == "front"
    pre = CameraPreprocessorNode(rt.context("camera_preprocessor"))
    rec = Recorder(rt)
    sim.start()
    rt.spin()
    (image,) = rec.on(TP.camera)
    assert (image.encoding, image.height, image.width, image.step) == ("bgra8", 600, 800, 3200)
    (observation,) = rec.on(TP.observation_image)
    assert (observation.height, observation.width) == (T.FRAME_SIZE, T.FRAME_SIZE * 4)
    assert pre.drops.counts == {}


def test_the_gym_environment_takes_the_front_camera():
    env = gymnasium.make(ENV_ID, sim_config=SimConfig(camera="front", other_vehicles=0, **CARLA_SIZE),
                         render_mode="rgb_array")
    try:
        observation, _ = env.reset(seed=1)
        assert observation["image"].shape == (4, T.FRAME_SIZE, T.FRAME_SIZE)
        assert env.render().shape == (600, 800, 3)
        assert observation["image"][-1, 0].mean() > observation["image"][-1, -1].mean(), "sky above the road"
    finally:
        env.close()
