"""The DDS receive path, one target per message type the stack subscribes to.

Raw sample bytes (what ``ddspy_take`` hands :class:`~td3_drive.runtime.dds.DdsRuntime`) ->
:func:`~td3_drive.runtime.dds.from_wire` -> every node callback subscribed to a topic of that type,
exactly as ``DdsRuntime.spin_once`` does it: a sample that does not decode is skipped and counted
(``dds.UNDECODABLE``), a decoded one goes to the callbacks, which must count a drop or act, never
raise.  Output check: every control published is finite and in range, every observation state finite.

The nodes (simulator, camera_preprocessor, policy, trainer, evaluator, classical_controller) are
built once, each on its own LocalRuntime (so one node's output does not loop into another), with a
route and an episode start delivered.  Two harness choices keep the fuzzer past the first checks:

* a decoded message whose stamp is not newer than the last one delivered gets the next stamp (a
  stale stamp is a one-line drop the bad-input battery covers; a fresh one reaches the decoding);
  a stamp the fuzzer makes newer is kept, so huge and odd stamps still reach the nodes;
* the message goes out with its companions of the same stamp (an image after the odometry of its
  tick, an observation image with a good state, a control after an observation pair), so the
  callback gets as far as it would in a running graph.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from td3_drive import topics as T
from td3_drive.runtime import dds
from td3_drive.runtime.local import LocalRuntime
from td3_drive.runtime.messages import new_message, seconds, stamp

from fuzz.common import ContractViolation

TP = T.Topics()
DT = 0.05
#: what the stack subscribes to (nodes/bridge.py, policy, trainer, simulator, evaluator, classical
#: controller, and the runtime's own /clock), keyed by the target name
TYPES: dict[str, str] = {
    "dds_image": T.IMAGE, "dds_odometry": T.ODOMETRY, "dds_path": T.PATH, "dds_joint_state": T.JOINT_STATE,
    "dds_control": T.CONTROL, "dds_header": T.HEADER, "dds_collision": T.COLLISION,
    "dds_lane_invasion": T.LANE_INVASION, "dds_uint8_array": T.UINT8_ARRAY, "dds_bool": T.BOOL,
    "dds_clock": T.CLOCK,
}
NODES = ("simulator", "camera_preprocessor", "policy", "trainer", "evaluator", "classical_controller")


# ----------------------------------------------------------------------------- good messages
def header(t: float, frame_id: str = "map") -> Any:
    return new_message(T.HEADER, stamp=stamp(t), frame_id=frame_id)


def odometry(t: float, x: float) -> Any:
    pose = new_message("geometry_msgs/msg/Pose", position=new_message("geometry_msgs/msg/Point", x=x),
                       orientation=new_message("geometry_msgs/msg/Quaternion", w=1.0))
    twist = new_message("geometry_msgs/msg/Twist", linear=new_message("geometry_msgs/msg/Vector3", x=5.0))
    return new_message(T.ODOMETRY, header=header(t), child_frame_id="ego_vehicle",
                       pose=new_message("geometry_msgs/msg/PoseWithCovariance", pose=pose),
                       twist=new_message("geometry_msgs/msg/TwistWithCovariance", twist=twist))


def camera(t: float, encoding: str = "bgra8", h: int = 24, w: int = 32, channels: int = 4) -> Any:
    data = np.random.default_rng(int(t * 1000) % 2**32).integers(0, 256, h * w * channels, dtype=np.uint8)
    return new_message(T.IMAGE, header=header(t, "ego_vehicle/rgb_front"), height=h, width=w, encoding=encoding,
                       is_bigendian=0, step=w * channels, data=data)


def observation_image(t: float) -> Any:
    pixels = np.random.default_rng(int(t * 1000) % 2**32).integers(0, 256, 84 * 336, dtype=np.uint8)
    return new_message(T.IMAGE, header=header(t, "ego_vehicle"), height=84, width=336, encoding="mono8",
                       is_bigendian=0, step=336, data=pixels)


def observation_state(t: float) -> Any:
    return new_message(T.JOINT_STATE, header=header(t, "ego_vehicle"), name=[f"s{i}" for i in range(53)],
                       position=np.linspace(-0.5, 0.5, 53))


def control(t: float) -> Any:
    return new_message(T.CONTROL, header=header(t, "ego_vehicle"), steer=0.1, throttle=0.4, brake=0.0)


def route(t: float = 0.0, length: float = 400.0) -> Any:
    poses = [new_message("geometry_msgs/msg/PoseStamped", header=header(t),
                         pose=new_message("geometry_msgs/msg/Pose",
                                          position=new_message("geometry_msgs/msg/Point", x=float(x)),
                                          orientation=new_message("geometry_msgs/msg/Quaternion", w=1.0)))
             for x in np.arange(0.0, length, 4.0)]
    return new_message(T.PATH, header=header(t), poses=poses)


def seed_messages(type_name: str) -> list[Any]:
    """Real messages of a type, as the bridge and our nodes send them."""
    t = 12.5
    if type_name == T.IMAGE:
        return [camera(t), camera(t, "mono8", channels=1), camera(t, "rgb8", channels=3),
                camera(t, "mono16", channels=2), observation_image(t)]
    if type_name == T.ODOMETRY:
        return [odometry(t, 10.0)]
    if type_name == T.PATH:
        return [route(t, 40.0), route(t, 8.0)]
    if type_name == T.JOINT_STATE:
        return [observation_state(t)]
    if type_name == T.CONTROL:
        return [control(t)]
    if type_name == T.HEADER:
        return [header(t, "0")]
    if type_name in (T.COLLISION, T.LANE_INVASION):
        return [new_message(type_name, header=header(t, "ego_vehicle"))]
    if type_name == T.UINT8_ARRAY:
        return [new_message(T.UINT8_ARRAY, data=np.frombuffer(blob, np.uint8).copy()) for blob in weight_seeds()]
    if type_name == T.BOOL:
        return [new_message(T.BOOL, data=True), new_message(T.BOOL, data=False)]
    if type_name == T.CLOCK:
        return [new_message(T.CLOCK, clock=stamp(t))]
    raise KeyError(type_name)


def weight_seeds() -> list[bytes]:
    """Actor weight blobs small enough to mutate: the real header of encode_actor's output with a
    few bytes of tensor data (the full 7 MB actor is in the weights target)."""
    from fuzz.file_targets import real_actor_blob

    blob = real_actor_blob()
    header_end = 8 + int.from_bytes(blob[:8], "little")
    return [blob[: header_end + 64], blob[:header_end]]


# ----------------------------------------------------------------------------- the nodes
class NodeGraph:
    """The stack's subscribing nodes, each on its own runtime, ready for one fuzzed sample at a time."""

    def __init__(self, scratch: Path) -> None:
        from td3_drive.app.config import load_parameters, merge
        from td3_drive.app.embedded import NODE_KINDS

        long = {"reward.max_episode_steps": 10**9}
        params = merge(load_parameters("embedded"), {
            "trainer": {"run_dir": str(scratch / "run"), "device": "cpu", "learning_starts": 10**9, "batch_size": 8,
                        "checkpoint_every": 0, "replay_capacity": 200, **long},
            "evaluator": long,
            "policy": {"device": "cpu", "backend": "torch", "explore": False},
        })
        self._fed: set[int] = set()  # id() of the messages being fed in now: the taps see them too
        self.runtimes: list[LocalRuntime] = []
        self.nodes: dict[str, Any] = {}
        self.checked = 0
        for kind in NODES:
            rt = LocalRuntime(params)
            rt.add_tap(self._check)
            node = NODE_KINDS[kind](rt.context(kind))
            self.nodes[kind] = node
            self.runtimes.append(rt)
        self.t = 1.0
        for rt in self.runtimes:
            for topic, msg in [(TP.route, route(0.0)), (TP.episode_start, header(self.t, "0")),
                               (TP.odometry, odometry(self.t, 0.0)), (TP.camera, camera(self.t))]:
                rt.publish(topic, msg)
            rt.spin()
        self.nodes["simulator"].start()
        self.runtimes[0].spin()
        #: (topic, type) of every subscription, and /clock: every runtime takes its time from it (use_sim_time)
        self.subscribed = sorted({(topic, rt._types[topic]) for rt in self.runtimes for topic in rt._subscribers}
                                 | {(TP.clock, T.CLOCK)})
        self.undecodable = 0

    def _check(self, topic: str, type_name: str, msg: Any, time_s: float) -> None:
        """Output check on every message a node publishes (not on what the harness feeds in)."""
        if id(msg) in self._fed:
            return
        if type_name == T.CONTROL:
            values = (msg.steer, msg.throttle, msg.brake)
            if not (all(map(math.isfinite, values)) and -1 <= msg.steer <= 1 and 0 <= msg.throttle <= 1
                    and 0 <= msg.brake <= 1):
                raise ContractViolation(f"{topic}: control out of range {values}")
        elif type_name == T.JOINT_STATE and topic == TP.observation_state:
            if not np.isfinite(np.asarray(msg.position, dtype=np.float64)).all():
                raise ContractViolation(f"{topic}: non-finite observation state")
        self.checked += 1

    def _fresh_stamp(self, msg: Any) -> float:
        """The stamp the message goes out with: its own if newer than the last, else the next one."""
        t = self.t + DT
        if hasattr(msg, "header") and hasattr(msg.header, "stamp"):
            own = seconds(msg.header.stamp)
            if math.isfinite(own) and own > self.t:
                t = own
            else:
                msg.header.stamp = stamp(t)
        elif msg.__msgtype__ == T.HEADER:
            own = seconds(msg.stamp)
            if math.isfinite(own) and own > self.t:
                t = own
            else:
                msg.stamp = stamp(t)
        elif msg.__msgtype__ == T.CLOCK:
            own = seconds(msg.clock)
            t = own if math.isfinite(own) and own > self.t else t
        self.t = t
        return t

    def deliver(self, msg: Any, type_name: str) -> None:
        """The decoded sample on every subscribed topic of its type, with its companions."""
        t = self._fresh_stamp(msg)
        x = 10.0 + (t * 5.0) % 300.0  # along the straight route, wherever the stamp puts us
        for topic, bound in self.subscribed:
            if bound != type_name:
                continue
            before: list[tuple[str, Any]] = []
            after: list[tuple[str, Any]] = []
            if topic == TP.camera:
                before = [(TP.odometry, odometry(t, x))]
            elif topic == TP.observation_image:
                after = [(TP.observation_state, observation_state(t))]
            elif topic == TP.observation_state:
                before = [(TP.observation_image, observation_image(t))]
            elif topic == TP.control:
                before = [(TP.observation_image, observation_image(t)), (TP.observation_state, observation_state(t))]
            else:  # a world topic (route, episode start, events, /clock, weights): a good tick after it
                after = [(TP.odometry, odometry(t, x)), (TP.camera, camera(t))]
            fed = before + [(topic, msg)] + after
            self._fed = {id(m) for _, m in fed}
            for rt in self.runtimes:
                if topic not in rt._subscribers and topic != TP.clock:
                    continue
                for tp, m in fed:
                    rt.publish(tp, m)
                rt.spin()
            self._fed = set()


_GRAPH: NodeGraph | None = None


def graph() -> NodeGraph:
    """One NodeGraph per process, shared by the DDS targets (building it takes a second)."""
    global _GRAPH
    if _GRAPH is None:
        from fuzz.file_targets import scratch

        _GRAPH = NodeGraph(scratch("td3_fuzz_dds_"))
    return _GRAPH


class DdsTarget:
    """bytes -> from_wire(type) -> the nodes' callbacks for that type."""

    expected: tuple[type[BaseException], ...] = ()  # a sample that does not decode is a counted drop, not an error
    max_len = 64 * 1024

    def __init__(self, name: str) -> None:
        self.name = name
        self.type_name = TYPES[name]
        dds.prime_codec(self.type_name)
        self.graph = graph()

    def seeds(self) -> list[bytes]:
        return [bytes(dds.wire_payload(msg, self.type_name)) for msg in seed_messages(self.type_name)]

    def __call__(self, data: bytes) -> None:
        try:
            msg = dds.from_wire(data, self.type_name)
        except dds.UNDECODABLE:  # spin_once: skipped and counted per topic
            self.graph.undecodable += 1
            return
        self.graph.deliver(msg, self.type_name)
