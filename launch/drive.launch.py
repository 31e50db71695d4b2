"""Drive with a trained actor: camera_preprocessor + policy (explore false, checkpoint loaded), no trainer.

    ros2 launch td3_drive drive.launch.py checkpoint:=/runs/td3/checkpoints/latest.safetensors
    ros2 launch td3_drive drive.launch.py checkpoint:=... episodes:=true   # reset after collisions

The graph is train.launch.py's ``launch_description("drive")`` (one place for
the bridge side, scale-out and parameter handling); parameters come from
config/drive.yaml.
"""
from __future__ import annotations

import importlib.util
import os


def _train_launch():
    # launch files are not a Python package: load the sibling file by path (both install to share/td3_drive/launch)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.launch.py")
    spec = importlib.util.spec_from_file_location("td3_drive_train_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generate_launch_description():
    return _train_launch().launch_description("drive")
