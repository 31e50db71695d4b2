"""The driving task: observations from bridge messages, the route, transitions by stamp, episode
scoring, reward, controls, metrics and the classical baseline.  numpy only: no ROS, no torch."""
