"""Property tests of the message handlers: any Image, any observation pair -> a valid output or one counted drop.

The replay buffer's properties (stacks never cross episodes, n-step windows, state round trips)
are already hypothesis-tested in test_replay.py.
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from td3_drive import topics as T
from td3_drive.runtime.local import LocalRuntime
from td3_drive.runtime.messages import new_message, stamp

TP = T.Topics()
VALID_ENCODINGS = ["bgra8", "bgr8", "rgb8", "rgba8", "mono8", "mono16"]
ENCODINGS = VALID_ENCODINGS * 3 + ["yuv422", "32FC1", "", "BGRA8", "bgra8\x00"]  # valid ones often enough
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _header(t: float) -> object:
    return new_message(T.HEADER, stamp=stamp(t), frame_id="ego_vehicle")


def _odometry(t: float, x: float) -> object:
    pose = new_message("geometry_msgs/msg/Pose", position=new_message("geometry_msgs/msg/Point", x=x),
                       orientation=new_message("geometry_msgs/msg/Quaternion", w=1.0))
    twist = new_message("geometry_msgs/msg/Twist", linear=new_message("geometry_msgs/msg/Vector3", x=5.0))
    return new_message(T.ODOMETRY, header=_header(t), pose=new_message("geometry_msgs/msg/PoseWithCovariance", pose=pose),
                       twist=new_message("geometry_msgs/msg/TwistWithCovariance", twist=twist))


def _route() -> object:
    poses = [new_message("geometry_msgs/msg/PoseStamped", header=_header(0.0),
                         pose=new_message("geometry_msgs/msg/Pose",
                                          position=new_message("geometry_msgs/msg/Point", x=float(x)),
                                          orientation=new_message("geometry_msgs/msg/Quaternion", w=1.0)))
             for x in range(0, 400, 2)]
    return new_message(T.PATH, header=_header(0.0), poses=poses)


class Harness:
    """One preprocessor (or policy) node; every example gets a fresh, strictly later stamp."""

    def __init__(self, node_cls, name: str, params: dict | None = None) -> None:
        self.rt = LocalRuntime({name: params or {}})
        self.node = node_cls(self.rt.context(name))
        self.out: list = []
        self.rt.add_tap(lambda topic, type_name, msg, t: self.out.append((topic, msg)))
        self.t = 1.0
        self.rt.publish(TP.route, _route())
        self.rt.spin()

    def step(self) -> float:
        self.t += 0.05
        self.out.clear()
        return self.t


_pre: Harness | None = None
_pol: Harness | None = None


def _preprocessor() -> Harness:
    global _pre
    if _pre is None:
        from td3_drive.nodes.preprocessor import CameraPreprocessorNode

        _pre = Harness(CameraPreprocessorNode, "camera_preprocessor")
    return _pre


def _policy() -> Harness:
    global _pol
    if _pol is None:
        from td3_drive.nodes.policy import PolicyNode

        _pol = Harness(PolicyNode, "policy", {"device": "cpu", "backend": "torch"})
    return _pol


dims = st.one_of(st.integers(1, 48), st.integers(0, 48), st.sampled_from([1 << 16, 1 << 31, (1 << 32) - 1]))


@SETTINGS
@given(encoding=st.sampled_from(ENCODINGS), height=dims, width=dims, step_extra=st.one_of(st.just(0), st.integers(0, 8), st.integers(-8, 8)),
       bigendian=st.integers(0, 1), data=st.binary(max_size=48 * 48 * 4 + 64), data_mode=st.sampled_from(
           ["exact", "exact", "exact", "random", "exact_minus_1"]))
def test_any_camera_image_publishes_valid_observation_or_counts_a_drop(encoding, height, width, step_extra,
                                                                      bigendian, data, data_mode) -> None:
    h = _preprocessor()
    t = h.step()
    channels = {"bgra8": 4, "rgba8": 4, "bgr8": 3, "rgb8": 3, "mono8": 1, "mono16": 2}.get(encoding, 1)
    step = max(0, width * channels + step_extra) if width * channels < 1 << 20 else width * channels
    if data_mode != "random" and step * height <= 48 * 48 * 4 + 64:
        data = bytes(max(0, step * height - (data_mode == "exact_minus_1")))
    image = new_message(T.IMAGE, header=_header(t), height=height, width=width, encoding=encoding,
                        is_bigendian=bigendian, step=min(step, (1 << 32) - 1), data=np.frombuffer(data, np.uint8).copy())
    before = h.node.drops.total
    h.rt.publish(TP.odometry, _odometry(t, 10.0 + t))
    h.rt.publish(TP.camera, image)
    h.rt.spin()  # must not raise
    published = {topic: msg for topic, msg in h.out if topic in (TP.observation_image, TP.observation_state)}
    event("published" if published else "dropped")  # --hypothesis-show-statistics: both branches run
    # the oracle: a well-formed image must make an observation (a node that drops everything fails)
    well_formed = (encoding in VALID_ENCODINGS and height > 0 and width > 0 and step >= width * channels
                   and len(image.data) >= step * height)
    assert bool(published) == well_formed, (encoding, height, width, step, len(image.data), h.node.drops.counts)
    if published:
        assert h.node.drops.total == before
        obs, state = published[TP.observation_image], published[TP.observation_state]
        assert (obs.height, obs.width, obs.encoding, obs.step) == (84, 336, "mono8", 336)
        assert len(obs.data) == 84 * 336
        assert len(state.position) == 53 and all(math.isfinite(v) for v in state.position)
    else:
        assert h.node.drops.total == before + 1


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@SETTINGS
@given(encoding=st.sampled_from(["mono8", "mono8", "rgb8", ""]), width=st.sampled_from([336] * 4 + [335, 84, 0]),
       height=st.sampled_from([84] * 4 + [83, 0]), cut=st.sampled_from([0] * 4 + [1, 3]),
       state=st.one_of(st.lists(floats, min_size=53, max_size=53),
                       st.lists(st.floats(-10, 10), min_size=53, max_size=53),
                       st.lists(st.floats(-1e3, 1e3), min_size=53, max_size=53), st.lists(floats, max_size=60)),
       clean_state=st.lists(st.floats(-1e4, 1e4), min_size=53, max_size=53), clean=st.booleans())
def test_any_observation_pair_acts_finitely_or_counts_a_drop(encoding, width, height, cut, state, clean_state,
                                                            clean) -> None:
    h = _policy()
    t = h.step()
    if clean:  # a well-formed pair with arbitrary finite state: the policy must act on every one
        encoding, width, height, cut, state = "mono8", 336, 84, 0, clean_state
    data = np.random.default_rng(len(state)).integers(0, 256, max(0, width * height - cut), dtype=np.uint8)
    before = h.node.drops.total
    h.rt.publish(TP.observation_image, new_message(T.IMAGE, header=_header(t), height=height, width=width,
                                                   encoding=encoding, step=width, data=data))
    h.rt.publish(TP.observation_state, new_message(T.JOINT_STATE, header=_header(t),
                                                   position=np.asarray(state, dtype=np.float64)))
    h.rt.spin()
    controls = [msg for topic, msg in h.out if topic == TP.control]
    event("acted" if controls else "dropped")
    assert controls or not clean
    if controls:
        (c,) = controls
        assert h.node.drops.total == before
        assert -1 <= c.steer <= 1 and 0 <= c.throttle <= 1 and 0 <= c.brake <= 1
        features = [msg for topic, msg in h.out if topic.startswith("/td3/features/")]
        assert features and all(np.isfinite(np.asarray(m.data, dtype=np.float64)).all() for m in features)
    else:
        assert h.node.drops.total == before + 1
