"""The embedded default: the real nodes on the in-process runtime against the built-in simulator.

One process, no ROS 2, no CARLA server: the simulator publishes the CARLA
bridge's topics, and the same camera_preprocessor, policy and trainer classes
that ``ros2 launch`` starts consume them.  A run directory holds the config
snapshot, TensorBoard logs, checkpoints and an MCAP bag of the /td3 topics and
the controls.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from td3_drive.runtime.bag import BagRecorder
from td3_drive.runtime.local import LocalRuntime
from td3_drive.runtime.parameters import for_node, internal_key, yaml_key

log = logging.getLogger(__name__)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
#: not recorded by default: 7 MB per weight message, 28 KB per observation image (a 6000-step run
#: made a 370 MB bag); the checkpoints hold the weights, `--bag-observations` keeps the images
BAG_EXCLUDE = ("/td3/actor_weights", "/td3/observation/image")


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML dicts -> dotted ROS 2 parameter names ({'learner': {'tau': x}} -> {'learner.tau': x})."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def find_config(name_or_path: str) -> Path:
    """A path, or a name in the package's config/ directory ('train' -> config/train.yaml)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    for candidate in (CONFIG_DIR / name_or_path, CONFIG_DIR / f"{name_or_path}.yaml"):
        if candidate.exists():
            return candidate
    try:  # installed package (colcon / ament): share/td3_drive/config
        from ament_index_python.packages import get_package_share_directory

        candidate = Path(get_package_share_directory("td3_drive")) / "config" / f"{name_or_path}.yaml"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    raise FileNotFoundError(f"config {name_or_path!r} not found (looked in {CONFIG_DIR})")


def load_parameters(config: str | Path, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """A ROS 2 parameter file -> {node key: {dotted_param: value}} with overrides applied.

    Node keys as :mod:`td3_drive.runtime.parameters` spells them: ``/**/policy`` -> ``policy``
    (any namespace), ``policy`` -> ``/policy`` (the root namespace only, as rclpy reads it).
    """
    raw = yaml.safe_load(Path(find_config(str(config))).read_text()) or {}
    params: dict[str, dict[str, Any]] = {}
    for node, body in raw.items():
        params.setdefault(internal_key(node), {}).update(flatten((body or {}).get("ros__parameters", {})))
    for node, values in (overrides or {}).items():
        params.setdefault(node, {}).update(flatten(values))
    return params


@dataclass
class EmbeddedGraph:
    runtime: LocalRuntime
    nodes: dict[str, Any]
    recorder: BagRecorder | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sim(self):
        """The (first) vehicle's simulator: ``run`` counts its ticks."""
        return self.sims[0]

    @property
    def sims(self) -> list:
        return self.of_kind("simulator")

    def of_kind(self, kind: str) -> list:
        """Every node of one kind ('policy' and 'v0/policy', 'v1/policy', ...), in vehicle order."""
        return [node for name, node in self.nodes.items() if name.rsplit("/", 1)[-1] == kind]

    def start(self) -> None:
        """Publish every simulator's first tick (a no-op once started)."""
        for sim in self.sims:
            sim.start()

    def run(self, ticks: int, on_progress: Callable[[], None] | None = None, every: int = 20,
            stop: Callable[[], bool] | None = None) -> None:
        """Advance the lockstep graph by ``ticks`` ticks of the first simulator (the others keep pace),
        or until ``stop()`` is true (checked on every delivered message)."""
        self.start()
        target = self.sim.ticks + ticks
        done = stop or (lambda: False)
        while self.sim.ticks < target and not done():
            goal = min(target, self.sim.ticks + every)
            if not self.runtime.spin(until=lambda: self.sim.ticks >= goal or done()):
                # lockstep: the world ticks on a control; nothing left to deliver means none will come
                raise RuntimeError(f"the graph went quiet at tick {self.sim.ticks}: no control for the last "
                                   f"tick (drops: {self.drop_counts()})")
            if on_progress:
                on_progress()

    def drop_counts(self) -> dict[str, dict[str, int]]:
        """Every node's dropped inputs per reason (only nodes that dropped something)."""
        counts = {name: dict(node.drops.counts) for name, node in self.nodes.items() if hasattr(node, "drops")}
        return {name: c for name, c in counts.items() if c}

    def close(self) -> None:
        for node in self.nodes.values():
            if hasattr(node, "close"):
                node.close()
        if self.recorder is not None:
            self.recorder.close()


#: nodes that run once per vehicle (the trainer and evaluator run once)
VEHICLE_NODES = ("simulator", "camera_preprocessor", "policy", "classical_controller")


def vehicle_parameters(parameters: dict[str, dict[str, Any]], vehicles: int) -> dict[str, dict[str, Any]]:
    """Scale-out on one runtime: per vehicle ``i`` the simulator, camera_preprocessor and policy
    run as ``/v<i>/<node>`` (role ``hero<i>``, namespace ``v<i>``, simulator seeds 100000 apart);
    they read the file's ``/**/<node>`` entries as under ROS, plus these per-vehicle ones. The
    trainer learns from all of them (as ``train.launch.py num_vehicles:=N`` wires it)."""
    if vehicles == 1:
        return parameters
    out = {name: dict(values) for name, values in parameters.items()}
    for i in range(vehicles):
        for name in VEHICLE_NODES:
            values: dict[str, Any] = {"role_name": f"hero{i}", "namespace": f"v{i}"}
            if name == "simulator":
                values["seed"] = int(for_node(parameters, f"v{i}/{name}").get("seed", 0)) + 100_000 * i
            out[f"/v{i}/{name}"] = values
    out.setdefault("trainer", {}).update(vehicle_namespaces=[f"v{i}" for i in range(vehicles)],
                                         vehicle_role_names=[f"hero{i}" for i in range(vehicles)])
    return out


def build_graph(parameters: dict[str, dict[str, Any]], controller: str = "policy", trainer: bool = True,
                evaluator: bool = False, bag_path: Path | None = None,
                bag_prefixes: tuple[str, ...] = ("/td3/", "/carla/ego_vehicle/vehicle_control_cmd"),
                bag_exclude: tuple[str, ...] = BAG_EXCLUDE, vehicles: int = 1) -> EmbeddedGraph:
    """Wire simulator -> camera_preprocessor -> policy|classical_controller (-> trainer | evaluator).

    ``vehicles`` > 1 runs that many pipelines (see :func:`vehicle_parameters`) feeding one trainer.
    """
    from td3_drive.nodes.preprocessor import CameraPreprocessorNode
    from td3_drive.sim.node import SimulatorNode
    from td3_drive.topics import Topics

    if vehicles < 1 or (vehicles > 1 and (evaluator or not trainer)):
        raise ValueError("vehicles must be >= 1; several vehicles need the trainer and no evaluator")
    runtime = LocalRuntime(vehicle_parameters(parameters, vehicles))
    recorder = None
    if bag_path is not None:
        prefixes, exclude = list(bag_prefixes), list(bag_exclude)
        for i in range(vehicles if vehicles > 1 else 0):  # the same topics under each namespace
            topics = Topics(f"hero{i}", f"v{i}")
            prefixes += [topics.td3_prefix, topics.control]
            exclude += [topics.td3_prefix + name[len("/td3/"):] for name in bag_exclude if name.startswith("/td3/")]
        recorder = BagRecorder(bag_path, prefixes=tuple(prefixes), exclude=tuple(exclude))
        runtime.add_tap(recorder)
    names = [""] if vehicles == 1 else [f"v{i}/" for i in range(vehicles)]
    nodes: dict[str, Any] = {}
    # subscription order is delivery order: the trainer sees an observation before the control
    # computed from it (it would also wait for a late one), so it is created before the policies
    for prefix in names:
        nodes[f"{prefix}simulator"] = SimulatorNode(runtime.context(f"{prefix}simulator"))
        nodes[f"{prefix}camera_preprocessor"] = CameraPreprocessorNode(runtime.context(f"{prefix}camera_preprocessor"))
    if trainer:
        from td3_drive.nodes.trainer import TrainerNode

        nodes["trainer"] = TrainerNode(runtime.context("trainer"))
    if evaluator:
        from td3_drive.nodes.evaluator import EvaluatorNode

        nodes["evaluator"] = EvaluatorNode(runtime.context("evaluator"))
    for prefix in names:
        if controller == "policy":
            from td3_drive.nodes.policy import PolicyNode

            nodes[f"{prefix}policy"] = PolicyNode(runtime.context(f"{prefix}policy"))
        elif controller == "pid":
            from td3_drive.nodes.classical_controller import ClassicalControllerNode

            nodes[f"{prefix}classical_controller"] = ClassicalControllerNode(
                runtime.context(f"{prefix}classical_controller"))
        else:
            raise ValueError(f"controller must be 'policy' or 'pid', got {controller!r}")
    runtime.spin()  # deliver latched messages (initial weights, exploration flag)
    if trainer:
        _wire_node_state(nodes)
    return EmbeddedGraph(runtime, nodes, recorder)


def _wire_node_state(nodes: dict[str, Any]) -> None:
    """Episode-boundary checkpoints carry every node's state; a resume puts it back before start()."""
    trainer = nodes["trainer"]
    stateful = {name: node for name, node in nodes.items()
                if name != "trainer" and hasattr(node, "state_dict") and hasattr(node, "load_state_dict")}
    trainer.node_state_provider = lambda: {name: node.state_dict() for name, node in stateful.items()}
    for name, state in trainer.resumed_node_states.items():
        if name in stateful:
            stateful[name].load_state_dict(state)
        else:
            log.warning("checkpoint has state for node %r, which this graph does not run", name)


def snapshot_config(run_dir: Path, parameters: dict[str, dict[str, Any]], argv: list[str] | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    nested = {yaml_key(node): {"ros__parameters": values} for node, values in parameters.items()}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(nested, sort_keys=True))
    if argv is not None:
        (run_dir / "command.json").write_text(json.dumps({"argv": argv, "time": time.time()}))
