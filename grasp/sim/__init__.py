"""Simulated grasp data and grasp trials in pybullet (scenes, gripper, candidates)."""
