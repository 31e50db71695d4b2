"""Train TD3 in CARLA: bridge (optional) + per-vehicle pipelines + one trainer.

    ros2 launch td3_drive train.launch.py                      # bridge, spawn, waypoints, our nodes
    ros2 launch td3_drive train.launch.py start_bridge:=false  # bridge already running elsewhere
    ros2 launch td3_drive train.launch.py num_vehicles:=4      # scale-out: hero0..hero3 in /v0../v3

Per vehicle: carla_spawn_objects (config/objects.json, id = role name),
carla_waypoint_publisher (the route), camera_preprocessor, policy (exploring)
and carla_episode_manager.  One trainer broadcasts actor weights to every
policy (/td3/actor_weights is never namespaced).  Launch arguments left empty
keep the value from config/train.yaml.  drive.launch.py reuses this file's
``launch_description("drive")``: same bridge side, no trainer, no exploration.
"""
from __future__ import annotations

import json
import os
import tempfile

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node, PushRosNamespace
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "td3_drive"
CONFIGS = {"train": "train.yaml", "drive": "drive.yaml"}
#: role names the bridge treats as ego vehicles by default (carla_ros_bridge.launch.py)
SCALE_OUT_ROLES = [f"hero{i}" for i in range(10)]

ARGUMENTS = [
    ("carla_host", "localhost", "CARLA server host"),
    ("carla_port", "2000", "CARLA server RPC port"),
    # the bridge reloads the town at start; LibCarla's world load gives up after timeout / 50 ms tries
    ("carla_timeout", "20", "seconds the bridge and the episode manager wait for CARLA"),
    ("town", "Town01", "CARLA town the bridge loads"),
    ("role_name", "ego_vehicle", "ego vehicle role name (single vehicle)"),
    ("namespace", "", "namespace for /td3 topics and our nodes (single vehicle)"),
    ("num_vehicles", "1", "vehicle pipelines; >1 uses roles hero0..heroN-1 in namespaces v0..vN-1"),
    ("checkpoint", "", "actor the policy loads at start (drive: the trained actor; train: until the first weights)"),
    ("resume", "false", "train: the trainer continues from the newest checkpoint in run_dir"),
    ("device", "", "torch device, e.g. cuda or cpu (empty: config/train.yaml)"),
    ("run_dir", "", "output directory for checkpoints and logs (empty: config/train.yaml)"),
    ("start_bridge", "true", "start carla_ros_bridge, carla_spawn_objects and carla_waypoint_publisher"),
    ("fixed_delta_seconds", "0.05", "simulation step (20 Hz; must be < 0.1)"),
    ("wait_for_control", "true", "lockstep: the world ticks only after a control command (1 s timeout)"),
    ("objects_definition_file", "", "carla_spawn_objects JSON (empty: config/objects.json)"),
    ("config", "", "parameter file (empty: config/train.yaml or config/drive.yaml)"),
]
#: drive only: reset on collision / off-route through carla_episode_manager (evaluation runs)
DRIVE_ARGUMENTS = [("episodes", "false",
                    "run carla_episode_manager and the evaluator: reset after a collision, off-route or the goal")]
#: train only: several CARLA servers run their vehicle pipelines without a trainer (docs/ros2.md)
TRAIN_ARGUMENTS = [("start_trainer", "true", "false: only the vehicle pipelines; the trainer runs elsewhere")]


def _value(context, name: str) -> str:
    return LaunchConfiguration(name).perform(context).strip()


def _true(text: str) -> bool:
    return text.lower() in ("true", "1", "yes", "on")


def _objects_file_for(role: str, source: str, first: bool = True) -> str:
    """The spawn file with the vehicle's id set to ``role`` (carla_spawn_objects uses the id as role_name).

    World-level pseudo sensors (``sensor.pseudo.actor_list``, ...: no vehicle to attach to) are
    kept in the first vehicle's file only; one per vehicle would publish the same topic N times.
    """
    with open(source) as handle:
        spec = json.load(handle)
    if not first:
        spec["objects"] = [obj for obj in spec.get("objects", []) if "sensors" in obj
                           or not str(obj.get("type", "")).startswith(("sensor.", "actor."))]
    for obj in spec.get("objects", []):
        if str(obj.get("type", "")).startswith("vehicle"):
            obj["id"] = role
    out = os.path.join(tempfile.mkdtemp(prefix="td3_drive_objects_"), f"objects_{role}.json")
    with open(out, "w") as handle:
        json.dump(spec, handle, indent=2)
    return out


def _vehicles(context) -> list[tuple[str, str]]:
    count = int(_value(context, "num_vehicles") or "1")
    if count < 1 or count > len(SCALE_OUT_ROLES):
        raise ValueError(f"num_vehicles must be 1..{len(SCALE_OUT_ROLES)} (the bridge's ego role names)")
    if count == 1:
        return [(_value(context, "role_name") or "ego_vehicle", _value(context, "namespace"))]
    return [(SCALE_OUT_ROLES[i], f"v{i}") for i in range(count)]


def _text(value: str) -> ParameterValue:
    # without value_type launch_ros YAML-parses strings: a role name "1" would arrive as an int
    return ParameterValue(value, value_type=str)


def _overrides(context, names: list[str]) -> dict:
    """Launch arguments the user set (non-empty) as parameter overrides; empty ones keep the YAML value."""
    return {name: _text(_value(context, name)) for name in names if _value(context, name)}


def _ids(role: str, namespace: str) -> dict:
    # an empty namespace is the nodes' default: not passed (empty strings trip older YAML parsers)
    return {"role_name": _text(role), **({"namespace": _text(namespace)} if namespace else {})}


def _bridge(context) -> list:
    host, port, timeout = (_value(context, n) for n in ("carla_host", "carla_port", "carla_timeout"))
    # the bridge tests `role_name in ego_vehicle_role_name`: its default is one concatenated string
    # (carla_ros_bridge.launch.py), a substring test; a YAML list makes it exact membership
    # (launch_ros evaluate_parameters.py YAML-parses substituted values)
    roles = json.dumps([role for role, _ in _vehicles(context)])
    return [
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare("carla_ros_bridge"), "carla_ros_bridge.launch.py"])
            ),
            launch_arguments={
                "host": host,
                "port": port,
                "timeout": timeout,
                "town": _value(context, "town"),
                "synchronous_mode": "True",
                "fixed_delta_seconds": _value(context, "fixed_delta_seconds"),
                "synchronous_mode_wait_for_vehicle_control_command": str(_true(_value(context, "wait_for_control"))),
                "ego_vehicle_role_name": roles,
            }.items(),
        )
    ]


def _vehicle_bridge_side(context, role: str, objects_file: str) -> list:
    return [
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare("carla_spawn_objects"), "carla_spawn_objects.launch.py"])
            ),
            launch_arguments={"objects_definition_file": objects_file}.items(),
        ),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution(
                    [FindPackageShare("carla_waypoint_publisher"), "carla_waypoint_publisher.launch.py"]
                )
            ),
            launch_arguments={
                "host": _value(context, "carla_host"),
                "port": _value(context, "carla_port"),
                "timeout": _value(context, "carla_timeout"),
                "role_name": role,
            }.items(),
        ),
    ]


def _architecture(context, mode: str, config: str) -> dict:
    """The actor the policy runs and the frames the preprocessor stacks, from one source: train, the
    trainer's learner in the parameter file; drive, the checkpoint (when it can be read now: else the
    policy's own parameters, and the policy refuses a checkpoint of another architecture when it loads)."""
    from td3_drive.app.config import checkpoint_architecture, learner_architecture, load_parameters

    if mode == "train":  # only what the file sets: the nodes' own defaults are the learner's (test_config)
        return learner_architecture(load_parameters(config), defaults=False)
    checkpoint = _value(context, "checkpoint")
    if not checkpoint:  # the parameter file's policy.checkpoint, if any, is checked by the policy itself
        return {}
    from td3_drive.rl.checkpoint import resolve_actor_file

    try:
        return checkpoint_architecture(resolve_actor_file(checkpoint))
    except (FileNotFoundError, OSError, ValueError):
        return {}


def _nodes(context, mode: str) -> list:
    share = get_package_share_directory(PACKAGE)
    config = _value(context, "config") or os.path.join(share, "config", CONFIGS[mode])
    objects = _value(context, "objects_definition_file") or os.path.join(share, "config", "objects.json")
    start_bridge = _true(_value(context, "start_bridge"))
    vehicles = _vehicles(context)
    architecture = _architecture(context, mode, config)
    stack = {"frame_stack": architecture["frame_stack"]} if "frame_stack" in architecture else {}
    common = {"use_sim_time": True}  # the bridge publishes /clock; every node runs on simulation time
    actions: list = _bridge(context) if start_bridge else []
    for index, (role, namespace) in enumerate(vehicles):
        ids = _ids(role, namespace)
        spawn_file = (objects if len(vehicles) == 1 and role == "ego_vehicle"
                      else _objects_file_for(role, objects, first=index == 0))
        # node names go under the namespace too (two policies cannot both be /policy)
        group: list = [PushRosNamespace(namespace)] if namespace else []
        if start_bridge:
            group += _vehicle_bridge_side(context, role, spawn_file)
        group += [
            Node(
                package=PACKAGE, executable="camera_preprocessor", name="camera_preprocessor",
                output="screen", emulate_tty=True,
                parameters=[config, {**common, **ids, **stack}],
            ),
            Node(
                package=PACKAGE, executable="policy", name="policy", output="screen", emulate_tty=True,
                parameters=[config, {**common, **ids, **architecture, **_overrides(context, ["device", "checkpoint"]),
                                     # wait-for-control: the watchdog must not send commands of its own
                                     "lockstep": _true(_value(context, "wait_for_control")),
                                     # drive: a trained actor, no exploration noise
                                     **({"explore": False} if mode == "drive" else {})}],
            ),
        ]
        episodes = mode == "train" or _true(_value(context, "episodes"))
        if mode == "drive" and episodes:  # ends episodes (collision, off-route, goal) and requests the reset
            group.append(Node(
                package=PACKAGE, executable="evaluator", name="evaluator", output="screen", emulate_tty=True,
                parameters=[config, {**common, **ids}],
            ))
        if episodes:
            group.append(Node(
                package=PACKAGE, executable="carla_episode_manager", name="carla_episode_manager",
                output="screen", emulate_tty=True,
                parameters=[config, {
                    **common, **ids,
                    "carla_host": _text(_value(context, "carla_host")),
                    "carla_port": int(_value(context, "carla_port")),
                    "carla_timeout_s": float(_value(context, "carla_timeout")),
                    "objects_definition_file": _text(spawn_file),
                    # scale-out: different seeds so vehicles do not all teleport to the same spot
                    **({"seed": index, "spawn_order": _text("random")} if len(vehicles) > 1 else {}),
                }],
            ))
        actions.append(GroupAction(group, scoped=True))
    if mode == "drive" or not _true(_value(context, "start_trainer")):  # drive declares no start_trainer
        return actions
    if len(vehicles) == 1:
        trainer_ids = _ids(*vehicles[0])
    else:  # one trainer learns from every pipeline; its own topics (critic features) stay un-namespaced
        trainer_ids = {"vehicle_namespaces": [ns for _, ns in vehicles],
                       "vehicle_role_names": [role for role, _ in vehicles]}
    actions.append(
        Node(
            package=PACKAGE, executable="trainer", name="trainer", output="screen", emulate_tty=True,
            # on Ctrl-C the trainer writes a final checkpoint (replay included if checkpoint_replay):
            # give it a minute before launch escalates SIGINT to SIGTERM (default 5 s)
            sigterm_timeout="60",
            parameters=[config, {**common, **trainer_ids, **_overrides(context, ["device", "run_dir"]),
                                 # learn in a worker thread: subscriptions never wait for an update
                                 "async_updates": True,
                                 **({"resume": True} if _true(_value(context, "resume")) else {})}],
        )
    )
    return actions


def launch_description(mode: str) -> LaunchDescription:
    """The train or drive graph; arguments are declared so `ros2 launch -s` lists them."""
    arguments = ARGUMENTS + (DRIVE_ARGUMENTS if mode == "drive" else TRAIN_ARGUMENTS)
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in arguments]
        + [OpaqueFunction(function=_nodes, args=[mode])]
    )


def generate_launch_description() -> LaunchDescription:
    return launch_description("train")
