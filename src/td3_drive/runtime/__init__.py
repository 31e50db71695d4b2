"""Runtimes the nodes run on: ``local`` (in-process lockstep, the embedded default) and ``ros`` (rclpy)."""
