"""Several CARLA servers, one trainer: what crosses between a vehicle's ROS domain and the trainer's.

One CARLA server drives N egos on one bridge (``train.launch.py num_vehicles:=N``).
Several servers need one ROS domain each: every carla_ros_bridge publishes the
global ``/clock``, ``/carla/status`` and ``/carla/world_info``.  The trainer then
lives in one domain, and a ``domain_bridge`` per other server forwards exactly
the topics the trainer uses for that vehicle (and sends weights, resets and the
exploration flag back).  This module lists those topics from ``topics.Topics``
(``test_scaleout`` checks the list against the trainer node's own publishers and
subscriptions) and writes the domain_bridge YAML (keys as parsed by domain_bridge's
``parse_domain_bridge_yaml_config.cpp``: ``reversed`` sends a topic the other way):

    td3-drive domain-bridge --namespace v1 --role-name hero1 \\
        --vehicle-domain 11 --trainer-domain 10 -o bridge_v1.yaml
    ros2 run domain_bridge domain_bridge bridge_v1.yaml
"""
from __future__ import annotations

from dataclasses import dataclass

from td3_drive import topics as T
from td3_drive.runtime.interface import LATCHED_QOS, RELIABLE_QOS, QoS


@dataclass(frozen=True)
class Crossing:
    topic: str
    type_name: str
    to_trainer: bool  # False: from the trainer to the vehicle's domain
    qos: QoS


def crossings(vehicle: T.Topics) -> list[Crossing]:
    """Every topic the trainer exchanges with one vehicle pipeline and its bridge."""
    into = [(vehicle.episode_start, T.HEADER, LATCHED_QOS), (vehicle.route, T.PATH, LATCHED_QOS),
            (vehicle.odometry, T.ODOMETRY, RELIABLE_QOS), (vehicle.collision, T.COLLISION, RELIABLE_QOS),
            (vehicle.lane_invasion, T.LANE_INVASION, RELIABLE_QOS),
            (vehicle.observation_image, T.IMAGE, RELIABLE_QOS), (vehicle.observation_state, T.JOINT_STATE, RELIABLE_QOS),
            (vehicle.control, T.CONTROL, RELIABLE_QOS)]
    out = [(vehicle.reset_request, T.HEADER, RELIABLE_QOS), (vehicle.exploration, T.BOOL, LATCHED_QOS),
           (vehicle.actor_weights, T.UINT8_ARRAY, LATCHED_QOS), (vehicle.learner_ready, T.HEADER, RELIABLE_QOS)]
    return ([Crossing(t, ty, True, q) for t, ty, q in into] + [Crossing(t, ty, False, q) for t, ty, q in out])


def _qos(qos: QoS) -> dict[str, object]:
    return {"reliability": "reliable" if qos.reliable else "best_effort",
            "durability": "transient_local" if qos.transient_local else "volatile", "history": "keep_last",
            "depth": qos.depth}


def domain_bridge_config(vehicle: T.Topics, vehicle_domain: int, trainer_domain: int) -> dict[str, object]:
    """The ``domain_bridge`` YAML (as a dict) for one vehicle's domain."""
    if vehicle_domain == trainer_domain:
        raise ValueError("the vehicle and the trainer share a domain: no bridge needed")
    for domain in (vehicle_domain, trainer_domain):
        if not 0 <= domain <= 232:  # the range ROS 2 allows for ROS_DOMAIN_ID
            raise ValueError(f"domain id {domain} outside 0..232")
    name = f"td3_{vehicle.namespace.strip('/') or vehicle.role_name}"
    topics: dict[str, object] = {}
    for c in crossings(vehicle):
        entry: dict[str, object] = {"type": c.type_name, "qos": _qos(c.qos)}
        if not c.to_trainer:
            entry["reversed"] = True  # from the trainer's domain into the vehicle's
        topics[c.topic] = entry
    return {"name": name, "from_domain": vehicle_domain, "to_domain": trainer_domain, "topics": topics}
