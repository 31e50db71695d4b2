"""ROS nodes: wiring only (subscribe, call core code, publish)."""
