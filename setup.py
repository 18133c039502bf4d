"""fastgdr: fast, checkpoint-compatible GDRNPP 6D object pose estimation.

Bring your own torch (CPU or CUDA build); install it first, then ``pip install -e .``.
"""

from pathlib import Path

from setuptools import find_packages, setup

version = {}
for line in Path("fastgdr/__init__.py").read_text().splitlines():
    if line.startswith("__version__"):
        version["__version__"] = line.split("=")[1].strip().strip('"')

EXTRAS = {
    "fastervit": ["fastervit>=1.0"],
    "kd": ["geomloss>=0.3"],
    "onnx": ["onnx", "onnxruntime"],
    "plot": ["matplotlib"],
    "tensorboard": ["tensorboard"],
    "test": ["pytest>=7"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="fastgdr",
    version=version["__version__"],
    description="Fast, checkpoint-compatible GDRNPP 6D object pose estimation on any timm backbone",
    long_description=Path("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["fastgdr", "fastgdr.*"]),
    python_requires=">=3.10",
    # No pin on a torch build: users bring the CPU or CUDA build they need.
    install_requires=[
        "torch>=2.1",
        "timm>=0.9",
        "numpy",
        "pyyaml",
        "tqdm",
        "opencv-python-headless",
        "scipy",
        "plyfile",
        "moderngl>=5.8",  # headless OpenGL over EGL (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri)
    ],
    extras_require=EXTRAS,
    license="Apache-2.0",
)
