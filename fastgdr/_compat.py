"""Imports of third-party packages that need care.

``import_timm`` works around one packaging problem: a torchvision wheel whose compiled
extension cannot load next to the installed torch (for example the CUDA build of
torchvision next to a CPU build of torch). torchvision then dies at import with
``RuntimeError: operator torchvision::nms does not exist``, because it registers fake
kernels for two operators that only the extension defines. timm imports torchvision, so
timm would be unusable too. fastgdr uses no torchvision operator; when (and only when)
the extension really fails to load, the two operator schemas are defined so that the
import succeeds. ``torchvision.ops.nms`` stays unusable in that case.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from fastgdr.errors import MissingDependencyError

# Schemas of the operators torchvision registers fake kernels for at import time.
_TORCHVISION_FAKE_REGISTERED_OPS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
# Keeps the library object (and with it the schema definitions) alive.
_torchvision_schema_library: torch.library.Library | None = None


def _torchvision_op_defined(name: str) -> bool:
    return hasattr(torch.ops.torchvision, name)


def torchvision_extension_loads() -> bool:
    """Whether torchvision's compiled extension loads next to this torch.

    Loads the extension exactly as ``import torchvision`` would. True where torchvision
    is not installed or already imported (nothing to repair).
    """
    if "torchvision" in sys.modules:
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True
    libraries = sorted(Path(spec.origin).parent.glob("_C.*"))
    if not libraries:
        return False
    try:
        torch.ops.load_library(str(libraries[0]))
    except (OSError, ImportError, RuntimeError):
        return False
    return True


def define_missing_torchvision_schemas() -> list[str]:
    """Define the torchvision operator schemas that a failed extension left undefined.

    Returns the names of the operators it defined (empty if all existed).
    """
    global _torchvision_schema_library
    missing = [n for n in _TORCHVISION_FAKE_REGISTERED_OPS if not _torchvision_op_defined(n)]
    if missing:
        if _torchvision_schema_library is None:
            _torchvision_schema_library = torch.library.Library("torchvision", "DEF")
        for name in missing:
            _torchvision_schema_library.define(_TORCHVISION_FAKE_REGISTERED_OPS[name])
    return missing


def import_timm() -> ModuleType:
    """Import timm, repairing the torchvision import first if its extension cannot load."""
    if "timm" not in sys.modules and not torchvision_extension_loads():
        define_missing_torchvision_schemas()
    return import_optional("timm", extra=None)


def import_optional(module: str, extra: str | None, purpose: str = "") -> ModuleType:
    """Import ``module`` or raise an error that says what to install.

    Args:
        module: importable module name, e.g. ``"geomloss"``.
        extra: the fastgdr extra that installs it (``pip install -e .[extra]``), or None
            for a core dependency.
        purpose: what the module is needed for, shown in the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        where = f" (pip install -e '.[{extra}]')" if extra else ""
        why = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"the package '{module}' is needed{why} but cannot be imported: {exc}. "
            f"Install it{where}."
        ) from None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so that bf16 autocast
    speeds training up instead of emulating bf16 in slower fp32 code."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
