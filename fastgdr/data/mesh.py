"""Triangle meshes of BOP object models: the :class:`Mesh` container and PLY I/O.

BOP models are in mm, in the model frame (origin at the centre of the 3D bounding box).
PLY files may be ASCII or binary; only triangle faces are supported (as in BOP).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastgdr._compat import import_optional
from fastgdr.errors import DatasetError

# Block size (points) of the pairwise-distance search behind Mesh.diameter.
_DIAMETER_CHUNK = 1024


@dataclass
class Mesh:
    """A triangle mesh.

    Attributes:
        vertices: (N, 3) float32 vertex positions in mm (model frame).
        faces: (M, 3) int32 vertex indices of the triangles.
        colors: (N, 3) float32 vertex colours (RGB) in [0, 1], or None.
        normals: (N, 3) float32 unit vertex normals, or None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None
    normals: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.vertices = _as_array(self.vertices, "vertices", np.float32, (-1, 3))
        self.faces = _as_array(self.faces, "faces", np.int32, (-1, 3))
        n = len(self.vertices)
        if self.colors is not None:
            self.colors = _as_array(self.colors, "colors", np.float32, (n, 3))
        if self.normals is not None:
            self.normals = _as_array(self.normals, "normals", np.float32, (n, 3))
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= n):
            raise ValueError(
                f"faces index vertices outside 0..{n - 1} "
                f"(found {self.faces.min()}..{self.faces.max()})"
            )

    @property
    def bbox_min(self) -> np.ndarray:
        """(3,) float64 minimum corner (min_x, min_y, min_z) of the bounding box in mm."""
        return self.vertices.min(axis=0).astype(np.float64)

    @property
    def extents(self) -> np.ndarray:
        """(3,) float64 bounding-box size (size_x, size_y, size_z) in mm."""
        return self.vertices.max(axis=0).astype(np.float64) - self.bbox_min

    @property
    def diameter(self) -> float:
        """Largest distance between two vertices in mm (exact; searched on the convex hull)."""
        return float(_max_pairwise_distance(_hull_points(self.vertices.astype(np.float64))))


def compute_vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals.

    Each vertex gets the sum of the (unnormalized, hence area-weighted) normals of the
    triangles around it, normalized. The face normal follows the right-hand rule on
    the face's vertex order. Vertices without a non-degenerate face get (0, 0, 0).

    Args:
        vertices: (N, 3) vertex positions.
        faces: (M, 3) integer triangle vertex indices.

    Returns:
        (N, 3) float32 unit normals.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    face_normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    normals = np.zeros_like(v)
    for corner in range(3):
        np.add.at(normals, f[:, corner], face_normals)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.divide(normals, length, out=np.zeros_like(normals), where=length > 0).astype(np.float32)


def load_ply(path: str | Path) -> Mesh:
    """Read a triangle mesh from a PLY file (ASCII or binary), as BOP stores models.

    Reads vertex ``x, y, z``, optional ``nx, ny, nz``, optional ``red, green, blue``
    (uchar values are divided by 255; float values are kept) and the ``face`` element's
    ``vertex_indices`` (or ``vertex_index``) list. Texture coordinates are ignored.

    Args:
        path: the .ply file.

    Returns:
        The mesh (vertices in the file's unit, mm for BOP).

    Raises:
        DatasetError: if the file is missing or unreadable, or lacks vertices, faces or
            one of x/y/z, or has a face that is not a triangle.
    """
    path = Path(path)
    plyfile = import_optional("plyfile", extra=None, purpose="reading PLY meshes")
    if not path.is_file():
        raise DatasetError(f"{path}: mesh file not found")
    try:
        ply = plyfile.PlyData.read(str(path))
    except (plyfile.PlyParseError, ValueError, EOFError) as exc:
        raise DatasetError(f"{path}: not a readable PLY file ({exc})") from None
    vertex = _element(ply, "vertex", path)
    face = _element(ply, "face", path)
    names = set(vertex.data.dtype.names)

    missing = [axis for axis in "xyz" if axis not in names]
    if missing:
        raise DatasetError(f"{path}: element 'vertex' lacks the properties {missing}")
    vertices = np.stack([vertex[a] for a in "xyz"], axis=1)
    normals = None
    if {"nx", "ny", "nz"} <= names:
        normals = np.stack([vertex[a] for a in ("nx", "ny", "nz")], axis=1)
    colors = None
    if {"red", "green", "blue"} <= names:
        colors = np.stack([vertex[c] for c in ("red", "green", "blue")], axis=1)
        colors = colors / 255.0 if np.issubdtype(colors.dtype, np.integer) else colors

    index_names = [n for n in ("vertex_indices", "vertex_index") if n in face.data.dtype.names]
    if not index_names:
        raise DatasetError(f"{path}: element 'face' has no 'vertex_indices' or 'vertex_index' list")
    faces = _triangles(face[index_names[0]], path, index_names[0])
    try:
        return Mesh(vertices=vertices, faces=faces, colors=colors, normals=normals)
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}") from None


def save_ply(path: str | Path, mesh: Mesh) -> None:
    """Write a mesh as a binary little-endian PLY in BOP's layout.

    Vertex properties ``x, y, z`` (float), ``nx, ny, nz`` (float, if the mesh has
    normals), ``red, green, blue`` (uchar, colours × 255 rounded, if it has colours);
    faces as the list ``vertex_indices`` (uchar count, int indices).

    Args:
        path: output .ply file (parent folders must exist).
        mesh: the mesh to write.
    """
    plyfile = import_optional("plyfile", extra=None, purpose="writing PLY meshes")
    fields: list[tuple[str, np.ndarray]] = [(a, mesh.vertices[:, i]) for i, a in enumerate("xyz")]
    if mesh.normals is not None:
        fields += [(a, mesh.normals[:, i]) for i, a in enumerate(("nx", "ny", "nz"))]
    if mesh.colors is not None:
        rgb = np.clip(np.rint(mesh.colors * 255.0), 0, 255).astype(np.uint8)
        fields += [(c, rgb[:, i]) for i, c in enumerate(("red", "green", "blue"))]
    vertex_data = np.empty(len(mesh.vertices), dtype=[(name, values.dtype) for name, values in fields])
    for name, values in fields:
        vertex_data[name] = values
    face_data = np.empty(len(mesh.faces), dtype=[("vertex_indices", np.int32, (3,))])
    face_data["vertex_indices"] = mesh.faces
    elements = [
        plyfile.PlyElement.describe(vertex_data, "vertex"),
        plyfile.PlyElement.describe(face_data, "face", len_types={"vertex_indices": "u1"}),
    ]
    plyfile.PlyData(elements, text=False, byte_order="<").write(str(path))


def _as_array(values: np.ndarray, name: str, dtype: type, shape: tuple[int, int]) -> np.ndarray:
    array = np.ascontiguousarray(values, dtype=dtype)
    rows, cols = shape
    if array.ndim != 2 or array.shape[1] != cols or (rows >= 0 and array.shape[0] != rows):
        expected = f"({'N' if rows < 0 else rows}, {cols})"
        raise ValueError(f"mesh {name} must have shape {expected}, got {array.shape}")
    return array


def _element(ply, name: str, path: Path):
    try:
        element = ply[name]
    except KeyError:
        raise DatasetError(f"{path}: PLY has no '{name}' element") from None
    if element.count == 0:
        raise DatasetError(f"{path}: PLY element '{name}' is empty")
    return element


def _triangles(lists: np.ndarray, path: Path, name: str) -> np.ndarray:
    """Stack a PLY face list property into (M, 3), checking every face is a triangle."""
    if lists.dtype != object:  # fixed-length lists already come as a 2D array
        faces = np.asarray(lists)
    else:
        lengths = np.fromiter((len(f) for f in lists), dtype=np.int64, count=len(lists))
        if np.any(lengths != 3):
            bad = int(np.argmax(lengths != 3))
            raise DatasetError(
                f"{path}: face {bad} has {lengths[bad]} vertices in '{name}'; "
                "only triangles are supported"
            )
        faces = np.stack(lists)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise DatasetError(f"{path}: '{name}' must hold triangles, got faces of shape {faces.shape}")
    return faces


def _hull_points(points: np.ndarray) -> np.ndarray:
    """The convex-hull vertices of ``points`` (all points if the hull is degenerate)."""
    spatial = import_optional("scipy.spatial", extra=None, purpose="the mesh diameter")
    if len(points) < 5:
        return points
    try:
        return points[spatial.ConvexHull(points).vertices]
    except spatial.QhullError:  # flat or degenerate point set
        return points


def _max_pairwise_distance(points: np.ndarray) -> float:
    """Largest Euclidean distance between two rows of ``points`` (0 for < 2 points)."""
    best = 0.0
    for i in range(0, len(points), _DIAMETER_CHUNK):
        block = points[i : i + _DIAMETER_CHUNK]
        for j in range(i, len(points), _DIAMETER_CHUNK):
            diff = block[:, None, :] - points[None, j : j + _DIAMETER_CHUNK, :]
            best = max(best, float(np.einsum("ijk,ijk->ij", diff, diff).max()))
    return float(np.sqrt(best))
