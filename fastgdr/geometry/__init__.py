"""Pose geometry: rotations, SITE translation, camera projection and crops."""

from fastgdr.geometry.camera import (
    coord_2d_map,
    crop_affine_matrix,
    crop_resize,
    project_points,
    test_time_crop,
    transform_points,
    zoom_camera_matrix,
)
from fastgdr.geometry.rotations import (
    allocentric_to_egocentric,
    axis_angle_to_matrix,
    egocentric_to_allocentric,
    matrix_to_rot6d,
    rot6d_to_matrix,
    rotation_angle_between,
)
from fastgdr.geometry.translation import site_to_translation, translation_to_site

__all__ = [
    "allocentric_to_egocentric",
    "axis_angle_to_matrix",
    "coord_2d_map",
    "crop_affine_matrix",
    "crop_resize",
    "egocentric_to_allocentric",
    "matrix_to_rot6d",
    "project_points",
    "rot6d_to_matrix",
    "rotation_angle_between",
    "site_to_translation",
    "test_time_crop",
    "transform_points",
    "translation_to_site",
    "zoom_camera_matrix",
]
