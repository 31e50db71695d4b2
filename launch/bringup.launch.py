"""The graph behind train.launch.py and drive.launch.py (they include this file with mode:=train / drive).

    world    simulator:=carla: carla_ros_bridge (start_bridge), then, once it has announced the town
             (`carla_world_ready` exits), the vehicles; simulator:=embedded: each vehicle's own
             `simulator` node (one vehicle: it publishes /clock)
    vehicles vehicle.launch.py once per vehicle: num_vehicles:=1 is role_name in namespace; N > 1
             are hero0..heroN-1 in v0..vN-1 (the bridge's default ego role names)
    trainer  train only (start_trainer): one, not namespaced, learning from every vehicle

The vehicle count decides how many includes there are and what the trainer and the bridge are told,
and Humble's launch has no loop action: that is the one OpaqueFunction.  It imports nothing of
td3_drive: the policy takes the actor's architecture from the weights it loads.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (DeclareLaunchArgument, GroupAction, IncludeLaunchDescription, OpaqueFunction,
                            RegisterEventHandler)
from launch.event_handlers import OnProcessExit, OnShutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = "td3_drive"
#: role names the bridge treats as ego vehicles by default (carla_ros_bridge.launch.py)
SCALE_OUT_ROLES = [f"hero{i}" for i in range(10)]
TRUE = ("true", "1", "yes", "on")

#: every argument of train.launch.py and drive.launch.py (they declare their own subsets, same defaults)
ARGUMENTS = [
    ("mode", "train", "train | drive"),
    ("simulator", "carla", "carla: CARLA through carla_ros_bridge | embedded: the built-in racetrack (no CARLA, "
                           "no GPU)"),
    ("carla_host", "localhost", "CARLA server host"),
    ("carla_port", "2000", "CARLA server RPC port"),
    # the bridge reloads the town at start; LibCarla's world load gives up after timeout / 50 ms tries
    ("carla_timeout", "20", "seconds the bridge and the episode manager wait for CARLA"),
    ("town", "Town01", "CARLA town the bridge loads"),
    ("role_name", "ego_vehicle", "ego vehicle role name (single vehicle)"),
    ("namespace", "", "namespace for /td3 topics and our nodes (single vehicle)"),
    ("num_vehicles", "1", "vehicle pipelines; >1 uses roles hero0..heroN-1 in namespaces v0..vN-1 (carla only)"),
    ("checkpoint", "", "actor the policy loads at start (drive: required; train: until the first weights)"),
    ("resume", "false", "train: the trainer continues from the newest checkpoint in run_dir"),
    ("device", "auto", "torch device of policy and trainer: auto | cpu | cuda[:N]"),
    ("run_dir", "runs/latest", "train: output directory for checkpoints and logs"),
    ("start_bridge", "true", "carla: start carla_ros_bridge, carla_spawn_objects and carla_waypoint_publisher"),
    ("start_trainer", "true", "train: false runs only the vehicle pipelines; the trainer runs elsewhere"),
    ("fixed_delta_seconds", "0.05", "simulation step (20 Hz; must be < 0.1)"),
    ("wait_for_control", "true", "lockstep: the world ticks only after a control command (1 s timeout)"),
    ("objects_definition_file", "", "carla_spawn_objects JSON (empty: config/objects.json)"),
    ("config", "", "parameter file (empty: config/train.yaml or config/drive.yaml)"),
    ("episodes", "false", "drive: the evaluator ends episodes (collision, off-route, goal) and requests resets "
                          "(CARLA: and carla_episode_manager); always on with simulator:=embedded"),
]


def _value(context, name: str) -> str:
    return LaunchConfiguration(name).perform(context).strip()


def _vehicles(context, simulator: str) -> list[tuple[str, str]]:
    """(role name, namespace) of each vehicle."""
    text = _value(context, "num_vehicles") or "1"
    if not text.isdigit() or not 1 <= int(text) <= len(SCALE_OUT_ROLES):
        raise ValueError(f"num_vehicles:={text}: must be 1..{len(SCALE_OUT_ROLES)} (the bridge's ego role names)")
    count = int(text)
    if count > 1 and simulator == "embedded":
        raise ValueError("num_vehicles > 1 needs simulator:=carla: each embedded simulator publishes /clock, and "
                         "two clocks in one ROS graph fight (td3-drive train --vehicles N runs them in one process)")
    if count == 1:
        return [(_value(context, "role_name") or "ego_vehicle", _value(context, "namespace"))]
    return [(SCALE_OUT_ROLES[i], f"v{i}") for i in range(count)]


def _policy_checkpoint_in(config: str) -> str:
    """A checkpoint the parameter file gives the policy itself ("" if none)."""
    with open(config) as handle:
        data = yaml.safe_load(handle) or {}
    for key, section in data.items():
        if str(key).rsplit("/", 1)[-1] == "policy" and isinstance(section, dict):
            found = str((section.get("ros__parameters") or {}).get("checkpoint") or "")
            if found:
                return found
    return ""


def _objects_file_for(role: str, source: str, directory: str, first: bool) -> str:
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
    out = os.path.join(directory, f"objects_{role}.json")
    with open(out, "w") as handle:
        json.dump(spec, handle, indent=2)
    return out


def _graph(context) -> list:
    mode, simulator = _value(context, "mode"), _value(context, "simulator")
    if mode not in ("train", "drive"):
        raise ValueError(f"mode:={mode}: must be train or drive")
    if simulator not in ("carla", "embedded"):
        raise ValueError(f"simulator:={simulator}: must be carla or embedded")
    share = get_package_share_directory(PACKAGE)
    config = _value(context, "config") or os.path.join(share, "config", f"{mode}.yaml")
    if mode == "drive" and not (_value(context, "checkpoint") or _policy_checkpoint_in(config)):
        raise ValueError("drive.launch.py needs checkpoint:=<run dir | checkpoints dir | step_* dir | "
                         "actor.safetensors>: without one the policy would drive a randomly initialised actor")
    vehicles = _vehicles(context, simulator)
    carla = simulator == "carla"
    start_bridge = carla and _value(context, "start_bridge").lower() in TRUE
    objects = _value(context, "objects_definition_file") or os.path.join(share, "config", "objects.json")
    scratch = tempfile.mkdtemp(prefix="td3_drive_launch_") if carla and len(vehicles) > 1 else None
    actions: list = []

    includes = []
    for index, (role, namespace) in enumerate(vehicles):
        spawn_file = objects if scratch is None else _objects_file_for(role, objects, scratch, first=index == 0)
        # scoped: Humble's include sets its arguments as launch configurations of the enclosing scope
        includes.append(GroupAction(scoped=True, actions=[IncludeLaunchDescription(
            PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare(PACKAGE), "launch",
                                                                "vehicle.launch.py"])),
            launch_arguments={
                "params_file": config, "mode": mode, "simulator": simulator, "namespace": namespace,
                "role_name": role, "objects_definition_file": spawn_file, "seed": str(index),
                # scale-out: vehicles do not all teleport to the same spawn points
                "spawn_order": "random" if len(vehicles) > 1 else "cycle",
                **{name: LaunchConfiguration(name) for name in (
                    "checkpoint", "device", "wait_for_control", "episodes", "start_bridge", "carla_host",
                    "carla_port", "carla_timeout")},
            }.items(),
        )]))
    if start_bridge:
        actions.append(IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare("carla_ros_bridge"), "carla_ros_bridge.launch.py"])),
            launch_arguments={
                "host": LaunchConfiguration("carla_host"), "port": LaunchConfiguration("carla_port"),
                "timeout": LaunchConfiguration("carla_timeout"), "town": LaunchConfiguration("town"),
                "synchronous_mode": "True", "fixed_delta_seconds": LaunchConfiguration("fixed_delta_seconds"),
                "synchronous_mode_wait_for_vehicle_control_command":
                    str(_value(context, "wait_for_control").lower() in TRUE),
                # the bridge tests `role_name in ego_vehicle_role_name`: its default is one concatenated
                # string, a substring test; a YAML list (launch_ros parses substituted values) is exact
                "ego_vehicle_role_name": json.dumps([role for role, _ in vehicles]),
            }.items(),
        ))
        # the spawn and the waypoint publisher must see the town the bridge (re)loads, not the old one
        ready = Node(package=PACKAGE, executable="carla_world_ready", name="carla_world_ready", output="screen",
                     emulate_tty=True, parameters=[config, {
                         "use_sim_time": True, "town": ParameterValue(LaunchConfiguration("town"), value_type=str)}])
        actions += [ready, RegisterEventHandler(OnProcessExit(target_action=ready, on_exit=includes))]
    else:
        actions += includes

    if mode == "train" and _value(context, "start_trainer").lower() in TRUE:
        if len(vehicles) == 1:
            role, namespace = vehicles[0]
            trainer_ids = {"role_name": ParameterValue(role, value_type=str),
                           "namespace": ParameterValue(namespace, value_type=str)}
        else:  # one trainer learns from every pipeline; its own topics (critic features) stay un-namespaced
            trainer_ids = {"vehicle_namespaces": [ns for _, ns in vehicles],
                           "vehicle_role_names": [role for role, _ in vehicles]}
        actions.append(Node(
            package=PACKAGE, executable="trainer", name="trainer", output="screen", emulate_tty=True,
            # on Ctrl-C the trainer writes a final checkpoint (replay included if checkpoint_replay):
            # give it a minute before launch escalates SIGINT to SIGTERM (default 5 s)
            sigterm_timeout="60",
            parameters=[config, {
                "use_sim_time": True, **trainer_ids,
                "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
                "run_dir": ParameterValue(LaunchConfiguration("run_dir"), value_type=str),
                "resume": LaunchConfiguration("resume"),
                # learn in a worker thread: subscriptions never wait for an update (back-pressure instead)
                "async_updates": True,
            }],
        ))
    if scratch is not None:  # the per-role spawn files live as long as the launch
        actions.append(RegisterEventHandler(OnShutdown(on_shutdown=[OpaqueFunction(
            function=lambda _context: shutil.rmtree(scratch, ignore_errors=True))])))
    return actions


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS]
        + [OpaqueFunction(function=_graph)])
