"""QoS of every subscription against its publisher, by the DDS request/offered rules.

A DDS reader and writer match only if the offer is at least the request: a RELIABLE reader
never hears a BEST_EFFORT writer, a TRANSIENT_LOCAL reader never a VOLATILE writer (history
depth does not take part).  Under ROS 2 a mismatch is silence, not an error, so it is checked
here for every topic our nodes read: against carla-ros-bridge's publishers (every one reliable,
volatile, depth 10; the waypoint publisher's route reliable, transient local, depth 1) and
against our own publishers; and the other way for what the bridge side reads from us.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from td3_drive.runtime import local
from td3_drive.runtime.interface import QoS
from td3_drive.topics import Topics

from fake_rclpy import compatible  # the DDS request/offered rule, as the fake middleware applies it

TP = Topics()
BRIDGE = QoS(depth=10, reliable=True, transient_local=False)
#: what carla-ros-bridge and carla_waypoint_publisher offer (bridge.py, actor publishers; waypoint l.64)
BRIDGE_OFFERS = {TP.camera: BRIDGE, TP.odometry: BRIDGE, TP.collision: BRIDGE, TP.lane_invasion: BRIDGE,
                 TP.speedometer: BRIDGE, TP.vehicle_status: BRIDGE, TP.clock: BRIDGE, TP.carla_status: BRIDGE,
                 TP.route: QoS(depth=1, reliable=True, transient_local=True)}
#: what the bridge side requests from us: the ego's control subscriber, the waypoint publisher's goal
BRIDGE_REQUESTS = {TP.control: BRIDGE, TP.goal: BRIDGE}


def test_the_rules() -> None:
    best_effort, volatile_reliable = QoS(reliable=False), QoS(reliable=True)
    latched = QoS(depth=1, reliable=True, transient_local=True)
    assert compatible(volatile_reliable, best_effort) and not compatible(best_effort, volatile_reliable)
    assert compatible(latched, volatile_reliable) and not compatible(volatile_reliable, latched)


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory) -> tuple[dict, dict]:
    """(topic -> [(node, QoS)] subscriptions, topic -> [(node, QoS)] publications) of every node."""
    from td3_drive.nodes.carla_episode_manager import CarlaEpisodeManagerNode
    from td3_drive.nodes.classical_controller import ClassicalControllerNode
    from td3_drive.nodes.evaluator import EvaluatorNode
    from td3_drive.nodes.policy import PolicyNode
    from td3_drive.nodes.preprocessor import CameraPreprocessorNode
    from td3_drive.nodes.trainer import TrainerNode

    subs: dict[str, list] = defaultdict(list)
    pubs: dict[str, list] = defaultdict(list)
    mp = pytest.MonkeyPatch()
    orig_sub, orig_pub = local.LocalContext.create_subscription, local.LocalContext.create_publisher

    def sub(self, type_name, topic, callback, qos=local.RELIABLE_QOS):
        subs[topic].append((self.name, qos))
        return orig_sub(self, type_name, topic, callback, qos)

    def pub(self, type_name, topic, qos=local.RELIABLE_QOS):
        pubs[topic].append((self.name, qos))
        return orig_pub(self, type_name, topic, qos)

    mp.setattr(local.LocalContext, "create_subscription", sub)
    mp.setattr(local.LocalContext, "create_publisher", pub)
    run = Path(tmp_path_factory.mktemp("qos"))
    rt = local.LocalRuntime({"trainer": {"run_dir": str(run), "device": "cpu"}, "policy": {"device": "cpu"}})
    try:
        for cls, name in ((CameraPreprocessorNode, "camera_preprocessor"), (PolicyNode, "policy"),
                          (TrainerNode, "trainer"), (EvaluatorNode, "evaluator"),
                          (ClassicalControllerNode, "classical_controller"),
                          (CarlaEpisodeManagerNode, "carla_episode_manager")):
            node = cls(rt.context(name))
            if hasattr(node, "close"):
                node.close()
    finally:
        mp.undo()
    return dict(subs), dict(pubs)


def test_every_subscription_to_the_bridge_matches_its_publisher(endpoints) -> None:
    subs, _ = endpoints
    checked = 0
    for topic, offered in BRIDGE_OFFERS.items():
        for node, requested in subs.get(topic, []):
            assert compatible(offered, requested), f"{node} requests {requested} on {topic}; the bridge offers {offered}"
            checked += 1
    assert checked >= 15  # camera, odometry, route, events, clock: read by several nodes each


def test_every_subscription_to_our_topics_matches_our_publishers(endpoints) -> None:
    subs, pubs = endpoints
    checked = 0
    for topic, readers in subs.items():
        for writer, offered in pubs.get(topic, []):
            for reader, requested in readers:
                assert compatible(offered, requested), f"{reader} on {topic}: {requested}, {writer} offers {offered}"
                checked += 1
    assert checked >= 6  # observation image + state (policy, trainer), weights, exploration, reset, episode start


def test_what_the_bridge_side_reads_from_us_matches(endpoints) -> None:
    _, pubs = endpoints
    for topic, requested in BRIDGE_REQUESTS.items():
        writers = pubs.get(topic, [])
        assert writers, f"no node of ours publishes {topic}"
        for writer, offered in writers:
            assert compatible(offered, requested), f"{writer} offers {offered} on {topic}; the bridge requests {requested}"
