"""The top-level API: every public name resolves, and ``import edgeweave`` stays light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import edgeweave

HEAVY = ("torch", "numpy", "onnxruntime", "transformers", "fastapi", "grpc")


def test_import_edgeweave_loads_no_heavy_library():
    code = f"import sys, edgeweave; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""


@pytest.mark.parametrize("name", [n for n in edgeweave.__all__ if n != "__version__"])
def test_every_public_name_resolves_to_its_module(name):
    module, attr = edgeweave._API[name]
    obj = getattr(edgeweave, name)
    assert obj is (getattr(sys.modules[module], attr) if attr else sys.modules[module])
    assert name in dir(edgeweave)


def test_compress_and_serve_stay_callable_after_their_subpackages_are_imported():
    # importing a submodule rebinds edgeweave.compress to the package: it must still call
    code = ("import edgeweave.compress.recipes, edgeweave.serve.config, edgeweave as ew\n"
            "from edgeweave.compress.api import compress\n"
            "from edgeweave.serve.server import serve\n"
            "assert ew.compress.__call_target__() is compress\n"
            "assert ew.serve.__call_target__() is serve\n"
            "try:\n"
            "    ew.compress(None, 'no-such-recipe')\n"
            "except Exception as e:\n"
            "    print(type(e).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "ConfigError"


def test_unknown_names_and_the_version():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        edgeweave.nope  # noqa: B018
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", edgeweave.__version__)


def test_readme_python_example_uses_only_the_top_level_api():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("### Python in three lines", 1)[1].split("```python", 1)[1]
    block = block.split("```", 1)[0]
    used = set(re.findall(r"\bew\.(\w+)", block))
    assert "import edgeweave as ew" in block and used
    assert used <= set(edgeweave.__all__)
