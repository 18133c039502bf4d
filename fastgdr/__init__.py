"""fastgdr: fast, checkpoint-compatible GDRNPP 6D object pose estimation.

Importing the package has no side effects: heavy and optional dependencies (timm,
fastervit, torch-pruning, geomloss, onnxruntime) are imported where they are used.
"""

__version__ = "0.1.0"
