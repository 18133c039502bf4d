"""Procedural triangle meshes (mm) with vertex colours for the synthetic dataset.

Each builder returns a :class:`~fastgdr.data.mesh.Mesh` centred on its bounding-box
centre (the BOP model-frame convention), with enough vertices for surface regions and
colour patterns. Symmetric shapes get colours that respect their symmetry, so that the
declared symmetries are true for geometry and appearance alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fastgdr.data.mesh import Mesh
from fastgdr.data.symmetry import rotation_about_axis

ColorFn = Callable[[np.ndarray], np.ndarray]


def _grid(nu: int, nv: int) -> tuple[np.ndarray, np.ndarray]:
    """Parameters (nu·nv, 2) in [0,1]² and triangles of a regular nu × nv vertex grid."""
    u, v = np.meshgrid(np.linspace(0, 1, nu), np.linspace(0, 1, nv), indexing="ij")
    params = np.stack([u.ravel(), v.ravel()], axis=1)
    idx = np.arange(nu * nv).reshape(nu, nv)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return params, faces


def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    vertices, faces, offset = [], [], 0
    for v, f in parts:
        vertices.append(v)
        faces.append(f + offset)
        offset += len(v)
    return np.concatenate(vertices), np.concatenate(faces)


def box(size: tuple[float, float, float], segments: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Closed box of ``size`` (mm) centred at the origin; each side a segments² grid."""
    half = np.asarray(size, dtype=np.float64) / 2.0
    params, faces = _grid(segments, segments)
    st = params * 2.0 - 1.0
    parts = []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            others = [a for a in range(3) if a != axis]
            v = np.zeros((len(st), 3))
            v[:, axis] = sign
            v[:, others[0]], v[:, others[1]] = st[:, 0], st[:, 1]
            parts.append((v * half, faces if sign > 0 else faces[:, ::-1]))
    return _merge(parts)


def cylinder(radius: float, height: float, around: int = 48, along: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Closed cylinder about the z axis, centred at the origin (mm)."""
    params, faces = _grid(around + 1, along)
    angle = params[:, 0] * 2 * math.pi
    side = np.stack([radius * np.cos(angle), radius * np.sin(angle), (params[:, 1] - 0.5) * height], 1)
    parts = [(side, faces)]
    for z in (-height / 2, height / 2):
        rings = 6
        pts, cap_faces = _grid(around + 1, rings)
        r = pts[:, 1] * radius
        a = pts[:, 0] * 2 * math.pi
        cap = np.stack([r * np.cos(a), r * np.sin(a), np.full_like(r, z)], 1)
        parts.append((cap, cap_faces))
    return _merge(parts)


def ellipsoid(radii: tuple[float, float, float], lat: int = 24, lon: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Closed ellipsoid centred at the origin (mm)."""
    params, faces = _grid(lon + 1, lat)
    phi = params[:, 0] * 2 * math.pi
    theta = params[:, 1] * math.pi
    unit = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], 1)
    return unit * np.asarray(radii), faces


def torus(major: float, minor: float, around: int = 40, tube: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Torus about the z axis centred at the origin (mm)."""
    params, faces = _grid(around + 1, tube + 1)
    a, b = params[:, 0] * 2 * math.pi, params[:, 1] * 2 * math.pi
    r = major + minor * np.cos(b)
    return np.stack([r * np.cos(a), r * np.sin(a), minor * np.sin(b)], 1), faces


def _moved(part: tuple[np.ndarray, np.ndarray], R: np.ndarray, t) -> tuple[np.ndarray, np.ndarray]:
    return part[0] @ R.T + np.asarray(t, dtype=np.float64), part[1]


def _centred_mesh(vertices: np.ndarray, faces: np.ndarray, color_fn: ColorFn) -> Mesh:
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2.0
    vertices = vertices - centre
    return Mesh(vertices, faces, colors=np.clip(color_fn(vertices), 0.0, 1.0))


@dataclass
class SyntheticObject:
    """A generated object: its mesh and the symmetries true for shape and colour."""

    name: str
    mesh: Mesh
    symmetries_discrete: list[np.ndarray]
    symmetries_continuous: list[tuple[np.ndarray, np.ndarray]]


def _palette(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.uniform(0.15, 0.95, size=(count, 3))


def make_block(rng: np.random.Generator, scale: float) -> SyntheticObject:
    """A box whose colours depend on |x|, |y|, |z|: symmetric under the three 180° turns."""
    size = tuple(np.array([80.0, 52.0, 34.0]) * scale)
    vertices, faces = box(size)
    a, b = _palette(rng, 2)

    def colors(v: np.ndarray) -> np.ndarray:
        stripes = (np.floor(np.abs(v[:, 0]) / (10 * scale)) % 2)[:, None]
        shade = (np.abs(v[:, 2]) / (size[2] / 2))[:, None]
        return (stripes * a + (1 - stripes) * b) * (0.6 + 0.4 * shade)

    flips = []
    for axis in np.eye(3):
        T = np.eye(4)
        T[:3, :3] = np.round(rotation_about_axis(axis, math.pi))
        flips.append(T)
    return SyntheticObject("block", _centred_mesh(vertices, faces, colors), flips, [])


def make_can(rng: np.random.Generator, scale: float) -> SyntheticObject:
    """A cylinder coloured by height only: continuous symmetry about z, no flip."""
    vertices, faces = cylinder(28.0 * scale, 90.0 * scale)
    top, bottom, band = _palette(rng, 3)

    def colors(v: np.ndarray) -> np.ndarray:
        h = (v[:, 2] - v[:, 2].min()) / np.ptp(v[:, 2])
        out = h[:, None] * top + (1 - h[:, None]) * bottom
        out[(h > 0.55) & (h < 0.7)] = band
        return out

    return SyntheticObject("can", _centred_mesh(vertices, faces, colors), [], [(np.array([0.0, 0.0, 1.0]), np.zeros(3))])


def make_mug(rng: np.random.Generator, scale: float) -> SyntheticObject:
    """A cylinder with a handle and a colour pattern around it: no symmetry."""
    body = cylinder(32.0 * scale, 70.0 * scale)
    handle = _moved(torus(20.0 * scale, 6.0 * scale), rotation_about_axis(np.array([1.0, 0, 0]), math.pi / 2), (34.0 * scale, 0.0, 0.0))
    vertices, faces = _merge([body, handle])
    a, b, c = _palette(rng, 3)

    def colors(v: np.ndarray) -> np.ndarray:
        angle = (np.arctan2(v[:, 1], v[:, 0]) + math.pi) / (2 * math.pi)
        h = (v[:, 2] - v[:, 2].min()) / np.ptp(v[:, 2])
        return angle[:, None] * a + (1 - angle[:, None]) * b + 0.3 * h[:, None] * c

    return SyntheticObject("mug", _centred_mesh(vertices, faces, colors), [], [])


def make_duck(rng: np.random.Generator, scale: float) -> SyntheticObject:
    """A body ellipsoid with a head and a beak, coloured by position: no symmetry."""
    body = ellipsoid((45.0 * scale, 30.0 * scale, 25.0 * scale))
    head = _moved(ellipsoid((17.0 * scale,) * 3), np.eye(3), (30.0 * scale, 0.0, 28.0 * scale))
    beak = _moved(ellipsoid((12.0 * scale, 6.0 * scale, 4.0 * scale)), np.eye(3), (50.0 * scale, 0.0, 28.0 * scale))
    vertices, faces = _merge([body, head, beak])
    a, b, c = _palette(rng, 3)

    def colors(v: np.ndarray) -> np.ndarray:
        t = (v - v.min(0)) / np.ptp(v, axis=0)
        return t[:, :1] * a + (1 - t[:, :1]) * b + 0.4 * t[:, 1:2] * c

    return SyntheticObject("duck", _centred_mesh(vertices, faces, colors), [], [])


def make_bracket(rng: np.random.Generator, scale: float) -> SyntheticObject:
    """An L-shaped bracket of two boxes with a gradient: no symmetry."""
    base = _moved(box((70.0 * scale, 40.0 * scale, 12.0 * scale), 10), np.eye(3), (0.0, 0.0, 0.0))
    wall = _moved(box((12.0 * scale, 40.0 * scale, 50.0 * scale), 10), np.eye(3), (29.0 * scale, 0.0, 31.0 * scale))
    vertices, faces = _merge([base, wall])
    a, b = _palette(rng, 2)

    def colors(v: np.ndarray) -> np.ndarray:
        t = (v[:, 1] - v[:, 1].min()) / np.ptp(v[:, 1])
        checker = ((np.floor(v[:, 0] / (9 * scale)) + np.floor(v[:, 2] / (9 * scale))) % 2)[:, None]
        return (t[:, None] * a + (1 - t[:, None]) * b) * (0.7 + 0.3 * checker)

    return SyntheticObject("bracket", _centred_mesh(vertices, faces, colors), [], [])


# The first two kinds are the symmetric ones, so every dataset with ≥ 2 objects has a
# discrete and a continuous symmetry.
OBJECT_KINDS: tuple[Callable[[np.random.Generator, float], SyntheticObject], ...] = (
    make_block, make_can, make_mug, make_duck, make_bracket,
)


def make_objects(count: int, seed: int) -> list[SyntheticObject]:
    """``count`` objects, cycling through :data:`OBJECT_KINDS` with varied size and colour."""
    rng = np.random.default_rng([seed, 17])
    objects = []
    for i in range(count):
        kind = OBJECT_KINDS[i % len(OBJECT_KINDS)]
        scale = 1.0 if i < len(OBJECT_KINDS) else rng.uniform(0.7, 1.3)
        objects.append(kind(rng, scale))
    return objects


def background_plane(size: float, rng: np.random.Generator, segments: int = 64) -> Mesh:
    """A square plane (z = 0, mm) with a random blotchy texture, used behind the objects."""
    params, faces = _grid(segments, segments)
    vertices = np.concatenate([(params - 0.5) * size, np.zeros((len(params), 1))], axis=1)
    low = rng.uniform(0.05, 0.95, size=(rng.integers(2, 7), rng.integers(2, 7), 3))
    iu = np.clip((params[:, 0] * (low.shape[0] - 1)).round().astype(int), 0, low.shape[0] - 1)
    iv = np.clip((params[:, 1] * (low.shape[1] - 1)).round().astype(int), 0, low.shape[1] - 1)
    colors = low[iu, iv] * rng.uniform(0.7, 1.0, size=(len(params), 1))
    return Mesh(vertices, faces, colors=colors)
