"""Several CARLA servers: the domain_bridge configuration carries exactly what the trainer exchanges."""
from __future__ import annotations

import yaml

from td3_drive import topics as T
from td3_drive.app import scaleout
from td3_drive.runtime.local import LocalContext, LocalRuntime


class RecordingContext(LocalContext):
    def __init__(self, runtime, name):
        super().__init__(runtime, name)
        self.subscribed: dict[str, tuple[str, object]] = {}
        self.published: dict[str, tuple[str, object]] = {}

    def create_publisher(self, type_name, topic, qos=scaleout.RELIABLE_QOS):
        self.published[topic] = (type_name, qos)
        return super().create_publisher(type_name, topic, qos)

    def create_subscription(self, type_name, topic, callback, qos=scaleout.RELIABLE_QOS):
        self.subscribed[topic] = (type_name, qos)
        return super().create_subscription(type_name, topic, callback, qos)


def _trainer_interface(tmp_path, vehicle: T.Topics):
    from td3_drive.nodes.trainer import TrainerNode

    rt = LocalRuntime({"trainer": {"run_dir": str(tmp_path), "device": "cpu", "learner.encoder_mode": "shared",
                                   "vehicle_namespaces": [vehicle.namespace, "v9"],
                                   "vehicle_role_names": [vehicle.role_name, "hero9"]}})
    ctx = RecordingContext(rt, "trainer")
    node = TrainerNode(ctx)
    node.close()
    return ctx


def test_crossings_are_exactly_the_trainers_topics_for_that_vehicle(tmp_path):
    vehicle = T.Topics("hero1", "v1")
    ctx = _trainer_interface(tmp_path, vehicle)
    mine = {t for t in (*ctx.subscribed, *ctx.published) if "hero1" in t or t.startswith("/v1/")}
    trainer_only = {vehicle.reward}  # for rqt in the trainer's domain; the vehicle does not use it
    crossings = scaleout.crossings(vehicle)
    assert {c.topic for c in crossings} == (mine - trainer_only) | {vehicle.actor_weights}
    for c in crossings:
        side = ctx.subscribed if c.to_trainer else ctx.published
        assert side[c.topic] == (c.type_name, c.qos), c.topic


def test_domain_bridge_yaml(tmp_path):
    out = tmp_path / "bridge_v1.yaml"
    from td3_drive.app import cli

    assert cli.main(["domain-bridge", "--namespace", "v1", "--role-name", "hero1", "--vehicle-domain", "11",
                     "--trainer-domain", "10", "-o", str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    assert (config["name"], config["from_domain"], config["to_domain"]) == ("td3_v1", 11, 10)
    topics = config["topics"]
    assert topics["/carla/hero1/odometry"] == {"type": "nav_msgs/msg/Odometry", "qos": {
        "reliability": "reliable", "durability": "volatile", "history": "keep_last", "depth": 10}}
    weights = topics["/td3/actor_weights"]
    assert weights["reversed"] is True and weights["qos"]["durability"] == "transient_local"
    assert topics["/v1/td3/reset_request"]["reversed"] is True and "reversed" not in topics["/v1/td3/observation/image"]
    assert not any(t in topics for t in ("/clock", "/carla/status", "/carla/world_info")), "global per server"


def test_bad_domains_are_refused(tmp_path):
    import pytest

    from td3_drive.app import cli

    for vehicle_domain, trainer_domain in ((3, 3), (300, 1)):
        with pytest.raises(ValueError):
            scaleout.domain_bridge_config(T.Topics("hero1", "v1"), vehicle_domain, trainer_domain)
    with pytest.raises(SystemExit, match="share a domain"):
        cli.main(["domain-bridge", "--namespace", "v1", "--role-name", "hero1", "--vehicle-domain", "3",
                  "--trainer-domain", "3", "-o", str(tmp_path / "x.yaml")])
