"""The embedded default: the real nodes on the in-process runtime against the built-in simulator.

One process, no ROS 2, no CARLA server: the simulator publishes the CARLA
bridge's topics, and the same camera_preprocessor, policy and trainer classes
that ``ros2 launch`` starts consume them.  A run directory holds the config
snapshot, TensorBoard logs, checkpoints and an MCAP bag of the /td3 topics and
the controls.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from td3_drive.app.config import Parameters, vehicle_parameters
from td3_drive.nodes.carla_episode_manager import CarlaEpisodeManagerNode
from td3_drive.nodes.classical_controller import ClassicalControllerNode
from td3_drive.nodes.evaluator import EvaluatorNode
from td3_drive.nodes.policy import PolicyNode
from td3_drive.nodes.preprocessor import CameraPreprocessorNode
from td3_drive.nodes.trainer import TrainerNode
from td3_drive.rl.session import SessionConfig
from td3_drive.runtime.bag import BagRecorder, play_bag
from td3_drive.runtime.local import LocalRuntime
from td3_drive.runtime.node import Node
from td3_drive.sim.node import SimulatorNode
from td3_drive.topics import Topics

log = logging.getLogger(__name__)
#: not recorded by default: 7 MB per weight message, 28 KB per observation image (a 6000-step run
#: made a 370 MB bag); the checkpoints hold the weights, `--bag-observations` keeps the images
BAG_EXCLUDE = ("/td3/actor_weights", "/td3/observation/image")


@dataclass
class EmbeddedGraph:
    runtime: LocalRuntime
    nodes: dict[str, Node]
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
        counts = {name: dict(node.drops.counts) for name, node in self.nodes.items()}
        return {name: c for name, c in counts.items() if c}

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()
        if self.recorder is not None:
            self.recorder.close()


BAG_PREFIXES = ("/td3/", "/carla/ego_vehicle/vehicle_control_cmd")


def bag_recorder(bag_path: Path, vehicles: int = 1, bag_prefixes: tuple[str, ...] = BAG_PREFIXES,
                 bag_exclude: tuple[str, ...] = BAG_EXCLUDE) -> BagRecorder:
    """The run's MCAP bag: the /td3 topics and the controls, of every vehicle, less ``bag_exclude``."""
    prefixes, exclude = list(bag_prefixes), list(bag_exclude)
    for i in range(vehicles if vehicles > 1 else 0):  # the same topics under each namespace
        topics = Topics(f"hero{i}", f"v{i}")
        prefixes += [topics.td3_prefix, topics.control]
        exclude += [topics.td3_prefix + name[len("/td3/"):] for name in bag_exclude if name.startswith("/td3/")]
    return BagRecorder(bag_path, prefixes=tuple(prefixes), exclude=tuple(exclude))


def build_graph(parameters: dict[str, dict[str, Any]], controller: str = "policy", trainer: bool = True,
                evaluator: bool = False, bag_path: Path | None = None, bag_prefixes: tuple[str, ...] = BAG_PREFIXES,
                bag_exclude: tuple[str, ...] = BAG_EXCLUDE, vehicles: int = 1) -> EmbeddedGraph:
    """Wire simulator -> camera_preprocessor -> policy|classical_controller (-> trainer | evaluator).

    ``vehicles`` > 1 runs that many pipelines (see :func:`vehicle_parameters`) feeding one trainer.
    """
    if vehicles < 1 or (vehicles > 1 and (evaluator or not trainer)):
        raise ValueError("vehicles must be >= 1; several vehicles need the trainer and no evaluator")
    runtime = LocalRuntime(vehicle_parameters(parameters, vehicles))
    recorder = None
    if bag_path is not None:
        recorder = bag_recorder(bag_path, vehicles, bag_prefixes, bag_exclude)
        runtime.add_tap(recorder)
    names = [""] if vehicles == 1 else [f"v{i}/" for i in range(vehicles)]
    nodes: dict[str, Node] = {}
    # subscription order is delivery order: the trainer sees an observation before the control
    # computed from it (it would also wait for a late one), so it is created before the policies
    for prefix in names:
        nodes[f"{prefix}simulator"] = SimulatorNode(runtime.context(f"{prefix}simulator"))
        nodes[f"{prefix}camera_preprocessor"] = CameraPreprocessorNode(runtime.context(f"{prefix}camera_preprocessor"))
    if trainer:
        nodes["trainer"] = TrainerNode(runtime.context("trainer"))
    if evaluator:
        nodes["evaluator"] = EvaluatorNode(runtime.context("evaluator"))
    for prefix in names:
        if controller == "policy":
            nodes[f"{prefix}policy"] = PolicyNode(runtime.context(f"{prefix}policy"))
        elif controller in ("pid", "privileged"):  # privileged: the parameters set classical_controller.privileged
            nodes[f"{prefix}classical_controller"] = ClassicalControllerNode(
                runtime.context(f"{prefix}classical_controller"))
        else:
            raise ValueError(f"controller must be 'policy', 'pid' or 'privileged', got {controller!r}")
    runtime.spin()  # deliver latched messages (initial weights, exploration flag)
    if trainer:
        _wire_node_state(nodes)
    return EmbeddedGraph(runtime, nodes, recorder)


def _wire_node_state(nodes: dict[str, Node]) -> None:
    """Episode-boundary checkpoints carry every node's state; a resume puts it back before start()."""
    session = nodes["trainer"].session
    stateful = {name: node for name, node in nodes.items()
                if name != "trainer" and node.state_dict() is not None}
    session.node_state_provider = lambda: {name: node.state_dict() for name, node in stateful.items()}
    for name, state in session.resumed_node_states.items():
        if name in stateful:
            stateful[name].load_state_dict(state)
        else:
            log.warning("checkpoint has state for node %r, which this graph does not run", name)


def play(bag: Path, parameters: Parameters) -> dict[str, Any]:
    """Feed a rosbag2 through camera_preprocessor + policy; what was fed, published and dropped."""
    runtime = LocalRuntime(parameters)
    published: dict[str, int] = {}
    runtime.add_tap(lambda topic, type_name, msg, t: published.__setitem__(topic, published.get(topic, 0) + 1))
    preprocessor = CameraPreprocessorNode(runtime.context("camera_preprocessor"))
    policy = PolicyNode(runtime.context("policy"))
    fed = play_bag(bag, runtime, topics=None)
    # the tap also sees every message the bag feeds in (runtime.publish): subtract those, so
    # "published" is what the nodes published (topic_types() cannot tell: it lists subscriptions too)
    by_nodes = {t: n - fed.get(t, 0) for t, n in sorted(published.items())}
    return {"bag": str(bag), "fed": fed, "published": {t: n for t, n in by_nodes.items() if n > 0},
            "drops": {"camera_preprocessor": dict(preprocessor.drops.counts), "policy": dict(policy.drops.counts)},
            "actions": policy.actions}


#: every node kind the programs run, by its node name
NODE_KINDS: dict[str, type[Node]] = {
    "simulator": SimulatorNode, "camera_preprocessor": CameraPreprocessorNode, "policy": PolicyNode,
    "trainer": TrainerNode, "evaluator": EvaluatorNode, "classical_controller": ClassicalControllerNode,
    "carla_episode_manager": CarlaEpisodeManagerNode,
}


def declared_parameters(kind: str) -> dict[str, tuple[Any, str]]:
    """``{parameter: (default, description)}`` as node ``kind`` declares them (built once, in a scratch dir)."""
    with tempfile.TemporaryDirectory(prefix="td3_params_") as scratch:
        given = {"run_dir": scratch} if kind == "trainer" else {}
        runtime = LocalRuntime({kind: given})
        ctx = runtime.context(kind)
        node = NODE_KINDS[kind](ctx)
        node.close()
    declared = dict(ctx.declared)
    if kind == "trainer":  # the default, not the scratch dir it was built in
        declared["run_dir"] = (SessionConfig().run_dir, declared["run_dir"][1])
    return declared
