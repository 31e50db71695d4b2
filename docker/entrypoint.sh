#!/bin/bash
# ROS 2 underlay, the bridge workspace, then td3_drive: `ros2 launch td3_drive ...` works in every service.
set -e
source "/opt/ros/${ROS_DISTRO}/setup.bash"
source /opt/carla_ws/install/setup.bash
source /ws/install/setup.bash
exec "$@"
