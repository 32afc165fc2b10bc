"""Pure modules import without torch (issue 22): the share page, a shared document and the
renderers must load where no model does. Each is imported in a fresh interpreter, so what an
earlier test imported cannot hide a chain; a failure names the greedyscore module that pulled
torch in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RENDER = sorted(f"greedyscore.render.{p.stem}" for p in (ROOT / "greedyscore" / "render").glob("*.py")
                if p.stem != "__init__")
PURE = ["greedyscore.sharing.document", "greedyscore.sharing.reply_json", "greedyscore.conversation",
        "greedyscore.types", "greedyscore.requests", "greedyscore.session", "greedyscore.render", *RENDER]

# Records, at torch's first import, the chain of greedyscore modules being imported, then imports the module.
PROBE = """
import importlib, sys, traceback

class Witness:
    chain = None

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "torch" and cls.chain is None:
            cls.chain = [f.filename for f in traceback.extract_stack() if "greedyscore" in f.filename]
        return None

sys.meta_path.insert(0, Witness)
importlib.import_module(sys.argv[1])
if "torch" in sys.modules:
    print(" -> ".join(dict.fromkeys(Witness.chain or ["(unknown)"])))
    sys.exit(1)
"""


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_without_torch(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, module], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"importing {module} loaded torch via {done.stdout.strip()}{done.stderr[-2000:]}"
