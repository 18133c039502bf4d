"""Headless OpenGL renderer of depth, instance, model-coordinate (xyz) and colour images.

Runs on moderngl over EGL: Mesa llvmpipe on a CPU-only machine, the GPU driver where one
is present. Nothing is created at import time; a :class:`Renderer` creates its GL context
on first use in the process that renders, and a copy pickled to a data-loader worker
creates its own there. EGL does not survive ``fork``: a process forked after its parent
created a context cannot render (it would hang); rendering there raises a RuntimeError.
Either render only in the workers, or start them with ``spawn``/``forkserver``.

Pixel convention (the one of the whole package; the BOP toolkit's renderer's):
    * Camera: OpenCV pinhole. A camera-frame point X (mm) projects to the continuous image
      coordinates ``(u, v) = (K X)[:2] / Z``, u to the right, v down. Image pixel (row i,
      column j) is the unit square ``[j, j + 1) × [i, i + 1)`` of these coordinates and
      shows the surface hit by the ray through its centre ``(u, v) = (j + 0.5, i + 0.5)``.
      This is how the BOP toolkit renders (its renderers map u straight to the window
      coordinate x), so depth, masks and scene_gt_info of BOP datasets, the VSD of the
      toolkit and everything rendered here agree pixel for pixel.
    * Consequences elsewhere: back-projecting pixel (i, j) uses (j + 0.5, i + 0.5)
      (:mod:`fastgdr.inference.refine`, :mod:`fastgdr.inference.icp`, EPnP in
      :mod:`fastgdr.inference.decoding`); GDRNPP's crop warp maps pixel *indices*
      (:func:`fastgdr.geometry.crop_affine_matrix`), so the intrinsics of a crop
      (:func:`fastgdr.geometry.zoom_camera_matrix`) carry the half-pixel terms.
      Two index-based quantities are kept as their owners define them: the distance image
      of VSD and of the visibility test (the toolkit uses u = j there,
      :func:`fastgdr.data.visibility.depth_to_distance`) and GDRNPP's ``coord_2d`` input
      (j / W, :func:`fastgdr.geometry.coord_2d_map`).
    * Poses are model → camera: ``X_cam = R @ X_model + t``, R (3, 3), t (3,) in mm.
    * Depth is the camera-frame z in mm (not the distance along the ray).
    * A pixel is covered by a triangle when its centre is inside the projected triangle
      (OpenGL rasterization rules). Both sides of a triangle are drawn (no culling).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fastgdr._compat import import_optional
from fastgdr.data.mesh import Mesh, compute_vertex_normals
from fastgdr.errors import MissingDependencyError, UnknownNameError

# Vertex colour used for meshes without colours.
DEFAULT_COLOR = (0.7, 0.7, 0.7)
# Framebuffers kept per renderer (one per image size and output set), oldest evicted first.
_MAX_CACHED_FRAMEBUFFERS = 8
# Colour attachments in shader output order: (components, dtype). Only the leading ones a
# render needs are attached (depth + instance always): fewer pixels to clear and write.
_ATTACHMENTS = ((1, "f4"), (1, "f4"), (4, "f4"), (4, "f1"))
_GL_PACKAGES = "libegl1 libegl-mesa0 libgl1-mesa-dri"
# Process that created the first EGL context (inherited, hence stale, in a forked child).
_egl_process: int | None = None

_VERTEX_SHADER = """
#version 330
uniform mat4 mvp;         // model -> clip
uniform mat4 model_view;  // model -> OpenCV camera frame (mm)
in vec3 in_position;
in vec3 in_normal;
in vec3 in_color;
out vec3 v_xyz;
out vec3 v_cam;
out vec3 v_normal;
out vec3 v_color;
void main() {
    gl_Position = mvp * vec4(in_position, 1.0);
    v_xyz = in_position;
    v_cam = (model_view * vec4(in_position, 1.0)).xyz;
    v_normal = mat3(model_view) * in_normal;
    v_color = in_color;
}
"""

_FRAGMENT_SHADER = """
#version 330
uniform float instance_plus_one;
uniform vec3 light_direction;  // camera frame, the direction the light travels
uniform float ambient;
in vec3 v_xyz;
in vec3 v_cam;
in vec3 v_normal;
in vec3 v_color;
layout(location = 0) out float out_depth;
layout(location = 1) out float out_instance;
layout(location = 2) out vec4 out_xyz;
layout(location = 3) out vec4 out_color;
void main() {
    out_depth = v_cam.z;
    out_instance = instance_plus_one;
    out_xyz = vec4(v_xyz, 1.0);
    vec3 n = normalize(v_normal);
    if (dot(n, v_cam) > 0.0) n = -n;  // two-sided: the normal faces the camera
    float diffuse = max(dot(n, -light_direction), 0.0);
    out_color = vec4(v_color * (ambient + (1.0 - ambient) * diffuse), 1.0);
}
"""


@dataclass
class RenderResult:
    """Images rendered by :meth:`Renderer.render`, all (H, W) in image row/column order.

    Attributes:
        depth: (H, W) float32 camera-frame z in mm of the nearest surface, 0 where nothing.
        instance: (H, W) int32 index into the rendered ``objects`` list of the visible
            object, -1 where nothing.
        xyz: (H, W, 3) float32 model-frame coordinates (mm) of the visible surface point,
            0 where nothing; None unless requested.
        color: (H, W, 3) uint8 RGB of the shaded vertex colours (Lambertian + ambient),
            black where nothing; None unless requested.
    """

    depth: np.ndarray
    instance: np.ndarray
    xyz: np.ndarray | None = None
    color: np.ndarray | None = None


def projection_matrix(K: np.ndarray, width: int, height: int, near: float, far: float) -> np.ndarray:
    """OpenGL projection of an OpenCV camera, keeping image rows top to bottom.

    Maps a camera-frame point to clip space so that its window coordinates are its image
    coordinates ``(u, v) = (K X)[:2] / Z``, as the BOP toolkit's renderers do: the GL pixel
    centre ``(j + 0.5, i + 0.5)`` samples (u, v) = (j + 0.5, i + 0.5) (see the module
    docstring), and row i of the read-back buffer is image row i (no flip). Depth maps z
    in [near, far] to NDC [-1, 1].

    Args:
        K: (3, 3) intrinsics in px (skew allowed).
        width: image width W in px.
        height: image height H in px.
        near: near clipping plane in mm (> 0).
        far: far clipping plane in mm (> near).

    Returns:
        (4, 4) float64 matrix P, clip = P @ [X, Y, Z, 1].
    """
    K = np.asarray(K, dtype=np.float64)
    P = np.zeros((4, 4), dtype=np.float64)
    P[0, :3] = 2.0 * K[0] / width
    P[0, 2] -= 1.0
    P[1, :3] = 2.0 * K[1] / height
    P[1, 2] -= 1.0
    P[2, 2] = (far + near) / (far - near)
    P[2, 3] = -2.0 * far * near / (far - near)
    P[3, 2] = 1.0
    return P


class Renderer:
    """Renders sets of posed meshes with one OpenGL context.

    Meshes are uploaded once; framebuffers are cached per image size. Not thread-safe:
    use one renderer per thread or process.

    Args:
        meshes: object id → mesh (mm) to upload, or None to add them later.
        near: near clipping plane in mm; surfaces closer than this are not drawn.
        far: far clipping plane in mm; surfaces farther than this are not drawn.

    Raises:
        ValueError: if not 0 < near < far.
    """

    def __init__(
        self, meshes: Mapping[int, Mesh] | None = None, near: float = 10.0, far: float = 20000.0
    ) -> None:
        if not 0.0 < near < far:
            raise ValueError(f"need 0 < near < far (mm), got near={near}, far={far}")
        self.near = float(near)
        self.far = float(far)
        self._meshes: dict[int, Mesh] = {}
        self._radii: dict[int, float] = {}
        self._gl: _GLState | None = None
        for obj_id, mesh in (meshes or {}).items():
            self.add_mesh(obj_id, mesh)

    @property
    def object_ids(self) -> list[int]:
        """Ids of the meshes this renderer knows, sorted."""
        return sorted(self._meshes)

    def bounding_radius(self, obj_id: int) -> float:
        """Largest distance (mm) of a vertex of object ``obj_id`` from its model origin."""
        obj_id = self._check_id(obj_id)
        if obj_id not in self._radii:
            self._radii[obj_id] = float(np.linalg.norm(self._meshes[obj_id].vertices.astype(np.float64), axis=1).max())
        return self._radii[obj_id]

    def add_mesh(self, obj_id: int, mesh: Mesh) -> None:
        """Add (or replace) the mesh of object ``obj_id``; uploaded on the next render.

        Raises:
            ValueError: if the mesh has no triangles.
        """
        if len(mesh.faces) == 0:
            raise ValueError(f"mesh of object {obj_id} has no faces: nothing to render")
        self._meshes[int(obj_id)] = mesh
        self._radii.pop(int(obj_id), None)
        if self._gl is not None:
            self._gl.drop_mesh(int(obj_id))

    def render(
        self,
        objects: Sequence[tuple[int, np.ndarray, np.ndarray]],
        K: np.ndarray,
        width: int,
        height: int,
        *,
        with_xyz: bool = True,
        with_color: bool = False,
        light_direction: np.ndarray | None = None,
        ambient: float = 0.4,
    ) -> RenderResult:
        """Render posed objects together (they occlude each other).

        Args:
            objects: (obj_id, R, t) per object: R (3, 3) rotation and t (3,) translation
                in mm, model → camera.
            K: (3, 3) intrinsics in px.
            width: image width W in px.
            height: image height H in px.
            with_xyz: also return model-frame coordinates.
            with_color: also return a shaded colour image.
            light_direction: (3,) direction the light travels, camera frame; default
                (0, 0, 1), a light at the camera. Normalized internally.
            ambient: ambient share in [0, 1] of the shading; the rest is Lambertian.

        Returns:
            The rendered images; ``instance`` indexes ``objects``.

        Raises:
            UnknownNameError: for an obj_id without a mesh.
            ValueError: on wrong shapes of K, R, t or a non-positive size.
            MissingDependencyError: if moderngl or an EGL context is not available.
        """
        K = _check_matrix(K, "K")
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got width={width}, height={height}")
        light = np.asarray((0.0, 0.0, 1.0) if light_direction is None else light_direction, np.float64)
        if light.shape != (3,) or not np.linalg.norm(light) > 0:
            raise ValueError(f"light_direction must be a non-zero (3,) vector, got {light}")
        poses = [
            (self._check_id(obj_id), _check_matrix(R, "R"), _check_translation(t))
            for obj_id, R, t in objects
        ]

        gl = self._context()
        projection = projection_matrix(K, width, height, self.near, self.far)
        return gl.render(
            poses,
            projection,
            int(width),
            int(height),
            with_xyz=with_xyz,
            with_color=with_color,
            light_direction=light / np.linalg.norm(light),
            ambient=float(ambient),
        )

    def render_depth(
        self, obj_id: int, R: np.ndarray, t: np.ndarray, K: np.ndarray, width: int, height: int
    ) -> np.ndarray:
        """Depth image of one object alone.

        Args:
            obj_id: object id.
            R: (3, 3) rotation, model → camera.
            t: (3,) translation in mm, model → camera.
            K: (3, 3) intrinsics in px.
            width: image width W in px.
            height: image height H in px.

        Returns:
            (H, W) float32 camera-frame z in mm, 0 where the object is not seen.
        """
        return self.render([(obj_id, R, t)], K, width, height, with_xyz=False).depth

    def close(self) -> None:
        """Release the GL context (a later render creates a new one)."""
        if self._gl is not None and self._gl.pid == os.getpid():
            self._gl.release()
        self._gl = None

    def __getstate__(self) -> dict:
        # GL objects belong to one process; a copy (pickled to a worker) creates its own.
        state = self.__dict__.copy()
        state["_gl"] = None
        return state

    def _check_id(self, obj_id: int) -> int:
        if int(obj_id) not in self._meshes:
            raise UnknownNameError(f"no mesh for object id {obj_id}; known ids: {self.object_ids}")
        return int(obj_id)

    def _context(self) -> _GLState:
        if self._gl is None or self._gl.pid != os.getpid():  # first use, or a copy in a child
            self._gl = _GLState()
        for obj_id, mesh in self._meshes.items():
            self._gl.upload_mesh(obj_id, mesh)
        return self._gl


class _GLState:
    """The GL context, program, uploaded meshes and framebuffers of one process."""

    def __init__(self) -> None:
        global _egl_process
        if _egl_process not in (None, os.getpid()):
            raise RuntimeError(
                f"this process was forked from process {_egl_process} after that one created an "
                "OpenGL context; EGL cannot be used in such a child (it hangs). Render only in the "
                "child processes, or start them with the 'spawn' or 'forkserver' method "
                "(DataLoader(multiprocessing_context='spawn'))."
            )
        self.moderngl = import_optional("moderngl", extra="render", purpose="rendering")
        try:
            self.ctx = self.moderngl.create_standalone_context(backend="egl")
        except Exception as exc:  # glcontext raises a plain Exception (e.g. libEGL not loaded)
            raise MissingDependencyError(
                f"cannot create a headless OpenGL (EGL) context: {exc}. On Debian/Ubuntu install "
                f"the GL libraries: apt-get install {_GL_PACKAGES}"
            ) from None
        self.pid = _egl_process = os.getpid()
        self.program = self.ctx.program(vertex_shader=_VERTEX_SHADER, fragment_shader=_FRAGMENT_SHADER)
        self.vaos: dict[int, object] = {}
        self.buffers: dict[int, tuple[object, object]] = {}
        self.framebuffers: dict[tuple[int, int, int], object] = {}

    def upload_mesh(self, obj_id: int, mesh: Mesh) -> None:
        """Upload ``mesh`` (position, normal, colour per vertex; int32 indices) if not yet done."""
        if obj_id in self.vaos:
            return
        normals = mesh.normals
        if normals is None:
            normals = compute_vertex_normals(mesh.vertices, mesh.faces)
        colors = mesh.colors
        if colors is None:
            colors = np.broadcast_to(DEFAULT_COLOR, mesh.vertices.shape)
        interleaved = np.concatenate((mesh.vertices, normals, colors), axis=1).astype("f4")
        vbo = self.ctx.buffer(interleaved.tobytes())
        ibo = self.ctx.buffer(np.ascontiguousarray(mesh.faces, dtype="i4").tobytes())
        self.vaos[obj_id] = self.ctx.vertex_array(
            self.program,
            [(vbo, "3f 3f 3f", "in_position", "in_normal", "in_color")],
            index_buffer=ibo,
            index_element_size=4,
        )
        self.buffers[obj_id] = (vbo, ibo)

    def drop_mesh(self, obj_id: int) -> None:
        """Free the GL objects of a mesh (it is re-uploaded on the next render)."""
        vao = self.vaos.pop(obj_id, None)
        if vao is not None:
            vao.release()
            for buffer in self.buffers.pop(obj_id):
                buffer.release()

    def framebuffer(self, width: int, height: int, num_attachments: int):
        """The cached framebuffer with the first ``num_attachments`` of ``_ATTACHMENTS``.

        Attachments: z (mm), instance + 1, (x, y, z, 1) model frame, RGBA colour; plus a
        depth buffer.
        """
        key = (width, height, num_attachments)
        if key not in self.framebuffers:
            if len(self.framebuffers) >= _MAX_CACHED_FRAMEBUFFERS:
                _release_framebuffer(self.framebuffers.pop(next(iter(self.framebuffers))))
            size = (width, height)
            self.framebuffers[key] = self.ctx.framebuffer(
                color_attachments=[
                    self.ctx.renderbuffer(size, components=components, dtype=dtype)
                    for components, dtype in _ATTACHMENTS[:num_attachments]
                ],
                depth_attachment=self.ctx.depth_renderbuffer(size),
            )
        return self.framebuffers[key]

    def render(
        self,
        poses: list[tuple[int, np.ndarray, np.ndarray]],
        projection: np.ndarray,
        width: int,
        height: int,
        *,
        with_xyz: bool,
        with_color: bool,
        light_direction: np.ndarray,
        ambient: float,
    ) -> RenderResult:
        """Draw ``poses`` and read back the requested attachments (see :meth:`Renderer.render`)."""
        with self.ctx:
            fbo = self.framebuffer(width, height, 4 if with_color else 3 if with_xyz else 2)
            fbo.use()
            fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
            self.ctx.enable(self.moderngl.DEPTH_TEST)
            self.ctx.disable(self.moderngl.CULL_FACE)
            self.program["light_direction"].value = tuple(float(x) for x in light_direction)
            self.program["ambient"].value = ambient
            for index, (obj_id, R, t) in enumerate(poses):
                model_view = np.eye(4)
                model_view[:3, :3] = R
                model_view[:3, 3] = t
                # GLSL matrices are column-major: write the transpose of the row-major matrix.
                self.program["mvp"].write((projection @ model_view).T.astype("f4").tobytes())
                self.program["model_view"].write(model_view.T.astype("f4").tobytes())
                self.program["instance_plus_one"].value = float(index + 1)
                self.vaos[obj_id].render(self.moderngl.TRIANGLES)

            depth = _read(fbo, 0, 1, "f4", width, height)[..., 0]
            instance = _read(fbo, 1, 1, "f4", width, height)[..., 0].astype(np.int32) - 1
            xyz = _read(fbo, 2, 3, "f4", width, height) if with_xyz else None
            color = _read(fbo, 3, 3, "f1", width, height) if with_color else None
        return RenderResult(depth=depth, instance=instance, xyz=xyz, color=color)

    def release(self) -> None:
        """Free all GL objects and the context."""
        for obj_id in list(self.vaos):
            self.drop_mesh(obj_id)
        for fbo in self.framebuffers.values():
            _release_framebuffer(fbo)
        self.framebuffers.clear()
        self.program.release()
        self.ctx.release()


def _read(fbo, attachment: int, components: int, dtype: str, width: int, height: int) -> np.ndarray:
    """Read one colour attachment into a new (H, W, components) array (row i = image row i)."""
    out = np.empty((height, width, components), dtype=np.float32 if dtype == "f4" else np.uint8)
    fbo.read_into(out, components=components, attachment=attachment, dtype=dtype)
    return out


def _release_framebuffer(fbo) -> None:
    for attachment in (*fbo.color_attachments, fbo.depth_attachment):
        attachment.release()
    fbo.release()


def _check_matrix(M: np.ndarray, name: str) -> np.ndarray:
    M = np.asarray(M, dtype=np.float64)
    if M.shape != (3, 3):
        raise ValueError(f"{name} must have shape (3, 3), got {M.shape}")
    return M


def _check_translation(t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    if t.size != 3:
        raise ValueError(f"t must have 3 elements (mm), got shape {t.shape}")
    return t.reshape(3)
