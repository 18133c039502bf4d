"""The torchvision import repair is applied only where the extension really fails."""

import importlib.util
import subprocess
import sys
import types

import pytest

from fastgdr import _compat
from fastgdr.errors import MissingDependencyError


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_timm_imports_and_repair_matches_extension_state():
    out = run_python(
        "import sys, fastgdr._compat as c\n"
        "loads = c.torchvision_extension_loads()\n"
        "timm = c.import_timm()\n"
        "import torchvision\n"
        "print(loads, c._torchvision_schema_library is not None, 'timm' in sys.modules)\n"
    )
    loads, repaired, imported = out.split()
    assert imported == "True"
    # schemas are defined by fastgdr exactly when the real extension cannot load
    assert repaired == str(loads == "False")


def test_importing_fastgdr_has_no_side_effects():
    out = run_python(
        "import sys, fastgdr, fastgdr.models, fastgdr.config, fastgdr.checkpoint\n"
        "import fastgdr._compat as c\n"
        "print('timm' in sys.modules, 'torchvision' in sys.modules, c._torchvision_schema_library)\n"
    )
    assert out == "False False None"


def test_extension_check_with_a_broken_library(monkeypatch, tmp_path):
    package = tmp_path / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_C.so").write_bytes(b"not a shared library")
    spec = importlib.util.spec_from_file_location("torchvision", package / "__init__.py")
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    assert _compat.torchvision_extension_loads() is False


def test_extension_check_when_nothing_to_repair(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    assert _compat.torchvision_extension_loads() is True
    monkeypatch.delitem(sys.modules, "torchvision")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert _compat.torchvision_extension_loads() is True


def test_schemas_are_defined_once():
    out = run_python(
        "import fastgdr._compat as c, torch\n"
        "first = c.define_missing_torchvision_schemas()\n"
        "second = c.define_missing_torchvision_schemas()\n"
        "print(sorted(first), second, hasattr(torch.ops.torchvision, 'nms'))\n"
    )
    assert out == "['nms', 'qnms'] [] True"


def test_optional_import_names_what_to_install():
    with pytest.raises(MissingDependencyError, match=r"pip install -e '\.\[ot\]'"):
        _compat.import_optional("surely_not_a_module_xyz", extra="ot", purpose="OT distillation")


@pytest.mark.skipif(importlib.util.find_spec("fastervit") is None, reason="fastervit is not installed")
def test_a_fastervit_backbone_can_be_the_first_thing_built():
    # fastervit imports timm (so torchvision) itself: the repair has to come first
    out = run_python(
        "from fastgdr.models.backbones import build_backbone\n"
        "print(build_backbone('FViT0')[1].channels)\n"
    )
    assert out.splitlines()[-1] == "512"
