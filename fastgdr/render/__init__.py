"""Headless OpenGL rendering of depth, instance, model-coordinate and colour images."""

from fastgdr.render.renderer import DEFAULT_COLOR, Renderer, RenderResult, projection_matrix

__all__ = ["DEFAULT_COLOR", "RenderResult", "Renderer", "projection_matrix"]
