"""The launch files, evaluated with stub ``launch`` / ``launch_ros`` / ``ament_index_python`` modules.

No ROS here: the stubs record every action's arguments, the test runs the
launch files' OpaqueFunction with chosen launch arguments and checks what
would start: only executables setup.py installs, only config files that
exist, every YAML / launch parameter declared by the node it is given to
(nodes built on the in-process runtime), bridge arguments the upstream launch
files declare, and topic names that match ``td3_drive.topics`` and the bridge
contract.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import py_compile
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from td3_drive.app.config import load_parameters
from td3_drive.runtime.local import LocalRuntime
from td3_drive.runtime.parameters import for_node, internal_key, matches
from td3_drive.topics import Topics

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"

#: launch arguments declared by the upstream carla-ros-bridge (ROS 2) launch files we include
UPSTREAM_ARGUMENTS = {
    "carla_ros_bridge.launch.py": {
        "host", "port", "timeout", "passive", "synchronous_mode", "synchronous_mode_wait_for_vehicle_control_command",
        "fixed_delta_seconds", "town", "register_all_sensors", "ego_vehicle_role_name",
    },
    "carla_spawn_objects.launch.py": {"objects_definition_file", "spawn_point_ego_vehicle", "spawn_sensors_only"},
    "carla_waypoint_publisher.launch.py": {"host", "port", "timeout", "role_name"},
}
#: carla_ros_bridge.launch.py's default ego_vehicle_role_name list
BRIDGE_EGO_ROLES = {"hero", "ego_vehicle"} | {f"hero{i}" for i in range(10)}
NODE_CLASSES = {
    "camera_preprocessor": "td3_drive.nodes.preprocessor:CameraPreprocessorNode",
    "policy": "td3_drive.nodes.policy:PolicyNode",
    "trainer": "td3_drive.nodes.trainer:TrainerNode",
    "carla_episode_manager": "td3_drive.nodes.carla_episode_manager:CarlaEpisodeManagerNode",
    "evaluator": "td3_drive.nodes.evaluator:EvaluatorNode",
}


# --------------------------------------------------------------------------- stubs
class Recorded:
    """Any launch entity: remembers its positional and keyword arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs


class LaunchConfiguration(Recorded):
    def perform(self, context: "Context") -> str:
        return context.configs[self.args[0]]


class ParameterValue(Recorded):
    @property
    def value(self) -> Any:
        value = self.args[0]
        return self.kwargs["value_type"](value) if "value_type" in self.kwargs else value


class Context:
    def __init__(self, configs: dict[str, str]) -> None:
        self.configs = configs
        self.launch_configurations = configs


def install_stubs(monkeypatch) -> None:
    def module(name: str, **attrs: Any) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
        return mod

    kinds = {k: type(k, (Recorded,), {}) for k in (
        "LaunchDescription", "DeclareLaunchArgument", "GroupAction", "IncludeLaunchDescription",
        "OpaqueFunction", "PythonLaunchDescriptionSource", "PathJoinSubstitution", "Node", "PushRosNamespace",
        "FindPackageShare", "IfCondition", "SetEnvironmentVariable",
    )}
    module("launch", LaunchDescription=kinds["LaunchDescription"])
    module("launch.actions", **{k: kinds[k] for k in (
        "DeclareLaunchArgument", "GroupAction", "IncludeLaunchDescription", "OpaqueFunction", "SetEnvironmentVariable")})
    module("launch.substitutions", LaunchConfiguration=LaunchConfiguration,
           PathJoinSubstitution=kinds["PathJoinSubstitution"])
    module("launch.launch_description_sources", PythonLaunchDescriptionSource=kinds["PythonLaunchDescriptionSource"])
    module("launch.conditions", IfCondition=kinds["IfCondition"])
    module("launch_ros")
    module("launch_ros.actions", Node=kinds["Node"], PushRosNamespace=kinds["PushRosNamespace"])
    module("launch_ros.substitutions", FindPackageShare=kinds["FindPackageShare"])
    module("launch_ros.parameter_descriptions", ParameterValue=ParameterValue)
    module("ament_index_python")
    # the source tree has the share layout for our files (config/, launch/)
    module("ament_index_python.packages", get_package_share_directory=lambda pkg: str(REPO))


def load_launch(monkeypatch, name: str) -> types.ModuleType:
    install_stubs(monkeypatch)
    spec = importlib.util.spec_from_file_location(f"launch_under_test_{name}", LAUNCH / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate(monkeypatch, name: str, **arguments: str) -> tuple[list, list[Recorded], dict[str, str]]:
    """(declared arguments, actions from the OpaqueFunction, effective launch configuration)."""
    module = load_launch(monkeypatch, name)
    description = module.generate_launch_description()
    entities = description.args[0]
    declared = [e for e in entities if type(e).__name__ == "DeclareLaunchArgument"]
    configs = {d.args[0] if d.args else d.kwargs["name"]: d.kwargs["default_value"] for d in declared}
    unknown = set(arguments) - set(configs)
    assert not unknown, f"{name} declares no launch argument(s) {unknown}"
    configs.update(arguments)
    actions = []
    for opaque in (e for e in entities if type(e).__name__ == "OpaqueFunction"):
        actions += opaque.kwargs["function"](Context(configs), *opaque.kwargs.get("args", []))
    return declared, actions, configs


def flatten(actions: list) -> list[tuple[Recorded, str]]:
    """Every action with the namespace pushed around it."""
    out = []
    for action in actions:
        if type(action).__name__ == "GroupAction":
            inner = action.args[0] if action.args else action.kwargs["actions"]
            pushed = [a.args[0] for a in inner if type(a).__name__ == "PushRosNamespace"]
            out += [(a, pushed[0] if pushed else ns) for a, ns in flatten(inner)]
        else:
            out.append((action, ""))
    return out


def nodes_of(actions: list) -> list[tuple[Recorded, str]]:
    return [(a, ns) for a, ns in flatten(actions) if type(a).__name__ == "Node"]


def includes_of(actions: list) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for action, _ in flatten(actions):
        if type(action).__name__ != "IncludeLaunchDescription":
            continue
        source = action.args[0]
        parts = source.args[0].args[0]
        package, file = parts[0].args[0], parts[-1]
        found.setdefault(file, []).append(
            {"package": package, **{k: _plain(v) for k, v in action.kwargs.get("launch_arguments", [])}}
        )
    return found


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, ParameterValue) else value


def console_scripts() -> dict[str, str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    entries = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "=" in node.value and ":" in node.value:
            name, _, target = node.value.partition("=")
            entries[name.strip()] = target.strip()
    return entries


def node_parameters(node: Recorded) -> tuple[list[Path], dict[str, Any]]:
    files, overrides = [], {}
    for entry in node.kwargs.get("parameters", []):
        if isinstance(entry, dict):
            overrides.update({k: _plain(v) for k, v in entry.items()})
        else:
            files.append(Path(entry))
    return files, overrides


def dotted(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested YAML maps are dotted parameter names in ROS 2 ({'learner': {'tau': 1}} -> 'learner.tau')."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def yaml_section(path: Path, name: str, namespace: str = "") -> dict[str, Any]:
    """What the node ``/<namespace>/<name>`` reads from ``path``, matched as rclpy matches it."""
    data = yaml.safe_load(path.read_text()) or {}
    for key, section in data.items():
        assert set(section or {}) == {"ros__parameters"}, f"{path.name}:{key} must hold only ros__parameters"
    return for_node(load_parameters(path), f"{namespace.strip('/')}/{name}")


def node_class(executable: str) -> type | None:
    """The node class, or None while its module is not written yet."""
    module_name, _, cls = NODE_CLASSES[executable].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("td3_drive.nodes"):
            return None
        raise
    return getattr(module, cls)


# --------------------------------------------------------------------------- tests
def test_launch_files_compile():
    for path in sorted(LAUNCH.glob("*.launch.py")):
        py_compile.compile(str(path), doraise=True)
    assert {p.name for p in LAUNCH.glob("*.launch.py")} >= {"train.launch.py", "drive.launch.py"}


@pytest.mark.parametrize("launch_file", ["train.launch.py", "drive.launch.py"])
def test_declared_arguments(monkeypatch, launch_file):
    declared, _, configs = evaluate(monkeypatch, launch_file)
    required = {"carla_host", "carla_port", "town", "role_name", "checkpoint", "device", "run_dir", "start_bridge",
                "namespace", "num_vehicles"}
    assert required <= set(configs)
    assert all(d.kwargs.get("description") for d in declared), "every launch argument needs a description"


@pytest.mark.parametrize(
    "launch_file, arguments",
    [
        ("train.launch.py", {}),
        ("train.launch.py", {"start_bridge": "false", "device": "cpu", "checkpoint": "/tmp/c.safetensors"}),
        ("train.launch.py", {"num_vehicles": "3"}),
        ("drive.launch.py", {"checkpoint": "/tmp/actor.safetensors"}),
        ("drive.launch.py", {"episodes": "true", "namespace": "car1"}),
    ],
)
def test_only_installed_executables_and_existing_config_files(monkeypatch, tmp_path, launch_file, arguments):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _, actions, _ = evaluate(monkeypatch, launch_file, **arguments)
    scripts = console_scripts()
    for node, _ in nodes_of(actions):
        kw = node.kwargs
        assert kw["package"] == "td3_drive"
        assert kw["executable"] in scripts, f"{kw['executable']} is not a console script in setup.py"
        module, _, function = scripts[kw["executable"]].partition(":")
        assert module.startswith("td3_drive.nodes.") and function == "main", "a node file's own main()"
        assert kw["name"] == kw["executable"], "node names are what config/*.yaml sections are keyed by"
        files, overrides = node_parameters(node)
        assert files, f"{kw['name']} gets no parameter file"
        for path in files:
            assert path.is_file(), f"{path} does not exist"
            assert path.parent == REPO / "config"
        assert overrides.get("use_sim_time") is True  # the bridge's /clock drives every node


def _check_node_parameters(monkeypatch, launch_file: str, **arguments: str) -> None:
    _, actions, _ = evaluate(monkeypatch, launch_file, **arguments)
    missing = []
    for node, namespace in nodes_of(actions):
        name = node.kwargs["name"]
        files, overrides = node_parameters(node)
        given: dict[str, Any] = {}
        fqn = f"/{namespace.strip('/')}/{name}".replace("//", "/")
        for path in files:
            # the files hold only what differs from the code, so a node may have no entry; but every
            # entry written for this node must reach it where it runs, or it silently runs on defaults
            written = [key for key in yaml.safe_load(path.read_text()) or {} if str(key).rsplit("/", 1)[-1] == name]
            assert all(matches(internal_key(key), fqn) for key in written), f"{path.name}: {written} miss {fqn}"
            given.update(yaml_section(path, name, namespace))
        given.update(overrides)
        cls = node_class(node.kwargs["executable"])
        if cls is None:
            missing.append(NODE_CLASSES[node.kwargs["executable"]])
            continue
        runtime = LocalRuntime(parameters={name: given})
        ctx = runtime.context(name)
        instance = cls(ctx)
        assert ctx.undeclared_parameters() == [], f"{name}: given but never declared: {ctx.undeclared_parameters()}"
        instance.close()
    if missing:
        pytest.skip(f"not written yet, so not checked: {sorted(set(missing))} (the others passed)")


@pytest.mark.parametrize("launch_file", ["train.launch.py", "drive.launch.py"])
def test_every_yaml_and_launch_parameter_is_declared_by_its_node(monkeypatch, launch_file, tmp_path):
    # every optional argument set, so each override reaches a node that declares it;
    # run_dir points into tmp so building the nodes writes nothing into the repo
    extra = {"run_dir": str(tmp_path / "run"), "device": "cpu"}
    extra.update({"episodes": "true"} if launch_file == "drive.launch.py" else {"resume": "false"})
    _check_node_parameters(monkeypatch, launch_file, **extra)


@pytest.mark.parametrize("launch_file, arguments", [
    ("train.launch.py", {"num_vehicles": "2"}),   # /v0/policy, /v1/camera_preprocessor, ...
    ("drive.launch.py", {"namespace": "car1", "episodes": "true"}),
])
def test_namespaced_nodes_read_their_parameter_file(monkeypatch, tmp_path, launch_file, arguments):
    """rclpy keeps a YAML entry only if its key matches the node's fully qualified name:
    with ``policy:`` keys a node in /v0 would silently run on code defaults."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _check_node_parameters(monkeypatch, launch_file, run_dir=str(tmp_path / "run"), **arguments)


@pytest.mark.parametrize("episodes", ["true", "false"])
def test_drive_with_episodes_launches_the_evaluator_that_requests_resets(monkeypatch, episodes):
    """Only the trainer and the evaluator publish reset_request: without an evaluator,
    drive.launch.py episodes:=true would never reset after a collision."""
    _, actions, _ = evaluate(monkeypatch, "drive.launch.py", episodes=episodes, namespace="car1")
    launched = {(n.kwargs["executable"], ns) for n, ns in nodes_of(actions)}
    assert (("evaluator", "car1") in launched) == (episodes == "true")
    assert (("carla_episode_manager", "car1") in launched) == (episodes == "true")
    if episodes == "true":
        from td3_drive.nodes.evaluator import EvaluatorNode

        rt = LocalRuntime()
        EvaluatorNode(rt.context("evaluator"))
        assert Topics().reset_request in rt.topic_types()  # it publishes the reset request


@pytest.mark.parametrize("arguments, roles", [
    ({"role_name": "car1"}, ["car1"]),            # not in the bridge's default list: no control subscriber
    ({"num_vehicles": "3"}, ["hero0", "hero1", "hero2"]),
])
def test_bridge_gets_our_role_names_as_a_list(monkeypatch, tmp_path, arguments, roles):
    """carla_ros_bridge tests ``role_name in ego_vehicle_role_name``; a YAML list (launch_ros parses
    substituted values as YAML) makes that exact membership instead of a substring test."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _, actions, _ = evaluate(monkeypatch, "train.launch.py", **arguments)
    (bridge,) = includes_of(actions)["carla_ros_bridge.launch.py"]
    assert yaml.safe_load(bridge["ego_vehicle_role_name"]) == roles
    assert float(bridge["timeout"]) >= 20.0  # the bridge reloads the town at start


@pytest.mark.parametrize("wait_for_control", ["true", "false"])
def test_policy_watchdog_is_silent_in_lockstep(monkeypatch, tmp_path, wait_for_control):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _, actions, _ = evaluate(monkeypatch, "train.launch.py", wait_for_control=wait_for_control)
    (policy,) = [n for n, _ in nodes_of(actions) if n.kwargs["executable"] == "policy"]
    _, overrides = node_parameters(policy)
    assert overrides["lockstep"] is (wait_for_control == "true")


def test_parameter_files_are_keyed_for_any_namespace():
    for path in sorted((REPO / "config").glob("*.yaml")):
        keys = list(yaml.safe_load(path.read_text()) or {})  # drive.yaml may be empty: deployment runs on defaults
        assert all(key.startswith("/**/") for key in keys), f"{path.name}: {keys}"


def test_embedded_loader_matches_node_keys_as_rclpy(tmp_path):
    """/**/policy reaches /policy and /v0/policy; policy reaches /policy only; later entries win."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({
        "/**/policy": {"ros__parameters": {"seed": 1, "explore": True}},
        "policy": {"ros__parameters": {"seed": 2}},
        "/v1/policy": {"ros__parameters": {"seed": 3}},
        "/*/trainer": {"ros__parameters": {"seed": 4}},
    }))
    runtime = LocalRuntime(load_parameters(path))
    read = {name: runtime.context(name)._given for name in ("policy", "v0/policy", "v1/policy",
                                                            "trainer", "v0/trainer", "a/b/trainer")}
    assert read["policy"] == {"seed": 2, "explore": True}
    assert read["v0/policy"] == {"seed": 1, "explore": True}
    assert read["v1/policy"] == {"seed": 3, "explore": True}
    assert read["trainer"] == {} and read["v0/trainer"] == {"seed": 4} and read["a/b/trainer"] == {}


def test_yaml_sections_for_ros_executables_are_launched(monkeypatch):
    """A section named after one of our ROS executables must be for a node the launch file starts.

    Other sections (the embedded simulator, evaluator, ...) are for the in-process
    graph only; ROS ignores parameters of nodes that do not exist.
    """
    scripts = set(console_scripts())
    for launch_file, config in (("train.launch.py", "train.yaml"), ("drive.launch.py", "drive.yaml")):
        path = REPO / "config" / config
        assert path.is_file(), f"config/{config} is missing (launch files load it)"
        extra = {"episodes": "true"} if launch_file == "drive.launch.py" else {}
        _, actions, _ = evaluate(monkeypatch, launch_file, **extra)
        launched = {n.kwargs["name"] for n, _ in nodes_of(actions)}
        sections = {internal_key(key).rsplit("/", 1)[-1] for key in yaml.safe_load(path.read_text()) or {}}
        stray = (sections & scripts) - launched
        assert not stray, f"{config} configures {stray}, which {launch_file} never starts"


def _ros_parameter_value_ok(value: Any) -> bool:
    if isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, list) and value:
        kinds = {bool if isinstance(v, bool) else type(v) for v in value}
        return len(kinds) == 1 and kinds <= {bool, int, float, str}
    return False


def test_config_values_are_ros2_parameter_types():
    """rcl's YAML parser rejects null values, empty lists and mixed-type lists."""
    for path in sorted((REPO / "config").glob("*.yaml")):
        for node, body in (yaml.safe_load(path.read_text()) or {}).items():
            assert isinstance(body, dict) and set(body) == {"ros__parameters"}, f"{path.name}:{node}"
            for name, value in dotted(body["ros__parameters"] or {}).items():
                assert _ros_parameter_value_ok(value), f"{path.name}:{node}.{name} = {value!r} is no ROS 2 parameter"


def test_bridge_includes_use_upstream_arguments(monkeypatch):
    _, actions, configs = evaluate(monkeypatch, "train.launch.py")
    includes = includes_of(actions)
    assert set(includes) == set(UPSTREAM_ARGUMENTS)
    for file, calls in includes.items():
        for call in calls:
            args = {k for k in call if k != "package"}
            assert args <= UPSTREAM_ARGUMENTS[file], f"{file}: unknown argument(s) {args - UPSTREAM_ARGUMENTS[file]}"
            assert call["package"] == file.replace(".launch.py", "")
    bridge = includes["carla_ros_bridge.launch.py"][0]
    assert bridge["synchronous_mode"] == "True"
    assert bridge["synchronous_mode_wait_for_vehicle_control_command"] == "True"
    assert 0 < float(bridge["fixed_delta_seconds"]) < 0.1 and float(bridge["fixed_delta_seconds"]) == 0.05
    assert (bridge["host"], bridge["port"], bridge["town"]) == (configs["carla_host"], configs["carla_port"], "Town01")
    spawn = includes["carla_spawn_objects.launch.py"][0]
    assert Path(spawn["objects_definition_file"]) == REPO / "config" / "objects.json"
    assert includes["carla_waypoint_publisher.launch.py"][0]["role_name"] == "ego_vehicle"


def test_start_bridge_false_includes_nothing(monkeypatch):
    _, actions, _ = evaluate(monkeypatch, "train.launch.py", start_bridge="false")
    assert includes_of(actions) == {}
    assert {n.kwargs["name"] for n, _ in nodes_of(actions)} == {
        "camera_preprocessor", "policy", "carla_episode_manager", "trainer"}


def test_start_trainer_false_runs_one_servers_vehicle_pipeline_only(monkeypatch):
    """Several CARLA servers: each launches its bridge side and pipeline; the trainer runs once elsewhere."""
    declared, actions, _ = evaluate(monkeypatch, "train.launch.py", start_trainer="false", role_name="hero1",
                                    namespace="v1")
    nodes = nodes_of(actions)
    assert {(n.kwargs["name"], ns) for n, ns in nodes} == {
        ("camera_preprocessor", "v1"), ("policy", "v1"), ("carla_episode_manager", "v1")}
    assert "carla_ros_bridge.launch.py" in includes_of(actions)
    drive_declared, _, _ = evaluate(monkeypatch, "drive.launch.py")
    assert "start_trainer" not in {d.kwargs.get("name", d.args[0] if d.args else None) for d in drive_declared}


def test_drive_is_preprocessing_and_policy_without_exploration(monkeypatch):
    _, actions, _ = evaluate(monkeypatch, "drive.launch.py", checkpoint="/models/actor.safetensors")
    nodes = {n.kwargs["name"]: n for n, _ in nodes_of(actions)}
    assert set(nodes) == {"camera_preprocessor", "policy"}
    _, overrides = node_parameters(nodes["policy"])
    assert overrides["explore"] is False and overrides["checkpoint"] == "/models/actor.safetensors"
    assert all(Path(f).name == "drive.yaml" for f in node_parameters(nodes["policy"])[0])
    _, actions, _ = evaluate(monkeypatch, "drive.launch.py", episodes="true")
    assert "carla_episode_manager" in {n.kwargs["name"] for n, _ in nodes_of(actions)}


def test_empty_arguments_keep_yaml_values_and_strings_stay_strings(monkeypatch):
    _, actions, _ = evaluate(monkeypatch, "train.launch.py", role_name="007")
    trainer = next(n for n, _ in nodes_of(actions) if n.kwargs["name"] == "trainer")
    raw = {k: v for entry in trainer.kwargs["parameters"] if isinstance(entry, dict) for k, v in entry.items()}
    assert not {"device", "checkpoint", "run_dir", "namespace", "resume"} & set(raw)  # empty: YAML decides
    assert raw["async_updates"] is True  # the learner never blocks the trainer's subscriptions
    assert float(trainer.kwargs["sigterm_timeout"]) >= 30  # time for the final checkpoint on Ctrl-C
    assert isinstance(raw["role_name"], ParameterValue) and raw["role_name"].value == "007"


def test_scale_out_namespaces_roles_and_spawn_files(monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the per-role spawn files
    _, actions, _ = evaluate(monkeypatch, "train.launch.py", num_vehicles="3")
    nodes = nodes_of(actions)
    per_ns: dict[str, set] = {}
    for node, ns in nodes:
        per_ns.setdefault(ns, set()).add(node.kwargs["name"])
    assert per_ns == {
        "v0": {"camera_preprocessor", "policy", "carla_episode_manager"},
        "v1": {"camera_preprocessor", "policy", "carla_episode_manager"},
        "v2": {"camera_preprocessor", "policy", "carla_episode_manager"},
        "": {"trainer"},
    }
    roles, actor_lists = set(), 0
    for node, ns in nodes:
        _, overrides = node_parameters(node)
        if node.kwargs["name"] == "trainer":
            assert overrides["vehicle_namespaces"] == ["v0", "v1", "v2"]
            assert overrides["vehicle_role_names"] == ["hero0", "hero1", "hero2"]
            assert "namespace" not in overrides and "role_name" not in overrides
            continue
        assert overrides["namespace"] == ns
        roles.add(overrides["role_name"])
        if node.kwargs["name"] == "carla_episode_manager":
            spec = json.loads(Path(overrides["objects_definition_file"]).read_text())
            vehicle = next(o for o in spec["objects"] if o["type"].startswith("vehicle"))
            assert vehicle["id"] == overrides["role_name"]
            actor_lists += sum(o["type"] == "sensor.pseudo.actor_list" for o in spec["objects"])
    assert roles == {"hero0", "hero1", "hero2"} and roles <= BRIDGE_EGO_ROLES
    assert actor_lists == 1  # a world-level pseudo sensor: one for the whole server, not one per vehicle
    includes = includes_of(actions)
    assert len(includes["carla_ros_bridge.launch.py"]) == 1
    assert {c["role_name"] for c in includes["carla_waypoint_publisher.launch.py"]} == roles


def test_objects_json_matches_the_topic_contract():
    spec = json.loads((REPO / "config" / "objects.json").read_text())
    vehicle = next(o for o in spec["objects"] if o["type"].startswith("vehicle"))
    assert vehicle["id"] == Topics().role_name == "ego_vehicle"
    sensors = {s["id"]: s for s in vehicle["sensors"]}
    camera = sensors["rgb_front"]
    assert camera["type"] == "sensor.camera.rgb"
    assert (camera["image_size_x"], camera["image_size_y"], camera["fov"]) == (800, 600, 90.0)
    # the bridge names topics /carla/<vehicle id>/<sensor id>/...: they must be ours
    topics = Topics()
    by_type = {s["type"]: f"/carla/{vehicle['id']}/{s['id']}" for s in vehicle["sensors"]}
    assert by_type["sensor.camera.rgb"] + "/image" == topics.camera == "/carla/ego_vehicle/rgb_front/image"
    assert by_type["sensor.other.collision"] == topics.collision
    assert by_type["sensor.other.lane_invasion"] == topics.lane_invasion
    assert by_type["sensor.pseudo.odom"] == topics.odometry
    assert by_type["sensor.pseudo.speedometer"] == topics.speedometer
    for sensor in vehicle["sensors"]:
        if not sensor["type"].startswith(("sensor.pseudo", "actor.pseudo")):
            assert {"x", "y", "z"} <= set(sensor["spawn_point"])


def test_topics_match_the_bridge_contract():
    t = Topics()
    assert (t.camera, t.odometry, t.speedometer, t.vehicle_status, t.collision, t.lane_invasion, t.route,
            t.control, t.carla_status, t.clock) == (
        "/carla/ego_vehicle/rgb_front/image", "/carla/ego_vehicle/odometry", "/carla/ego_vehicle/speedometer",
        "/carla/ego_vehicle/vehicle_status", "/carla/ego_vehicle/collision", "/carla/ego_vehicle/lane_invasion",
        "/carla/ego_vehicle/waypoints", "/carla/ego_vehicle/vehicle_control_cmd", "/carla/status", "/clock")
    ns = Topics("hero1", "v1")
    assert ns.camera == "/carla/hero1/rgb_front/image" and ns.reset_request == "/v1/td3/reset_request"
    assert ns.actor_weights == "/td3/actor_weights"  # one trainer for every pipeline
