"""Drive with a trained actor: the vehicle pipelines without trainer or noise (bringup.launch.py, mode:=drive).

    ros2 launch td3_drive drive.launch.py simulator:=embedded checkpoint:=runs/latest
    ros2 launch td3_drive drive.launch.py checkpoint:=/runs/td3                  # CARLA
    ros2 launch td3_drive drive.launch.py checkpoint:=/runs/td3 episodes:=true   # + resets after collisions

``checkpoint`` is required (a run directory, its checkpoints/ directory, one step_* directory or an
actor.safetensors file): without it the policy would drive a randomly initialised actor, so the launch
refuses.  Launch arguments override config/drive.yaml.
"""
from __future__ import annotations

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

#: name, default (as in bringup.launch.py), description
ARGUMENTS = [
    ("checkpoint", "", "required: the trained actor (run dir, checkpoints dir, step_* dir or actor.safetensors)"),
    ("simulator", "carla", "carla: CARLA through carla_ros_bridge | embedded: the built-in racetrack (no CARLA, "
                           "no GPU)"),
    ("episodes", "false", "the evaluator ends episodes (collision, off-route, goal) and requests resets (CARLA: "
                          "and carla_episode_manager); always on with simulator:=embedded"),
    ("carla_host", "localhost", "CARLA server host"),
    ("carla_port", "2000", "CARLA server RPC port"),
    ("carla_timeout", "20", "seconds the bridge and the episode manager wait for CARLA (it reloads the town)"),
    ("town", "Town01", "CARLA town the bridge loads"),
    ("role_name", "ego_vehicle", "ego vehicle role name (single vehicle)"),
    ("namespace", "", "namespace for /td3 topics and our nodes (single vehicle)"),
    ("num_vehicles", "1", "vehicle pipelines; >1 uses roles hero0..heroN-1 in namespaces v0..vN-1 (carla only)"),
    ("device", "auto", "torch device of the policy: auto | cpu | cuda[:N]"),
    ("start_bridge", "true", "carla: start carla_ros_bridge, carla_spawn_objects and carla_waypoint_publisher"),
    ("fixed_delta_seconds", "0.05", "simulation step (20 Hz; must be < 0.1)"),
    ("wait_for_control", "true", "lockstep: the world ticks only after a control command (1 s timeout)"),
    ("objects_definition_file", "", "carla_spawn_objects JSON (empty: config/objects.json)"),
    ("config", "", "parameter file (empty: config/drive.yaml)"),
]


def generate_launch_description() -> LaunchDescription:
    bringup = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("td3_drive"), "launch",
                                                            "bringup.launch.py"])),
        launch_arguments={"mode": "drive", **{name: LaunchConfiguration(name) for name, _, _ in ARGUMENTS}}.items(),
    )
    return LaunchDescription(
        [DeclareLaunchArgument(name, default_value=default, description=text) for name, default, text in ARGUMENTS]
        + [bringup])
