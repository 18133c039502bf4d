"""Pose-error functions and the BOP evaluation protocol."""
