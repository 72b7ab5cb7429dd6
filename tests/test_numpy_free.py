"""The core never imports NumPy: import it and run the flow both ways with NumPy blocked."""

import os
import subprocess
import sys

SCRIPT = r"""
import importlib.abc, sys, traceback

class BlockNumpy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "numpy" or name.startswith("numpy."):
            if any(f.filename.startswith(PACKAGE) for f in traceback.extract_stack()):
                print("missingglow tried to import numpy:", "".join(traceback.format_stack()))
                sys.exit(3)
            raise ModuleNotFoundError("numpy is blocked for this test", name=name)

import os
PACKAGE = os.path.join(os.getcwd(), "missingglow") + os.sep   # the package, not a folder so named
sys.meta_path.insert(0, BlockNumpy())
import torch
import missingglow
import missingglow.cli
model = missingglow.Glow(blocks=2, flows=2, hidden=8, image_size=8)
x = torch.rand(2, 3, 8, 8) - 0.5
with torch.no_grad():
    model.log_prob(x)
    back = model.decode(model.encode(x))
    model.sample(2, 0.7)
assert torch.allclose(back, x, atol=1e-4)
assert "numpy" not in sys.modules
print("numpy-free")
"""


def test_core_runs_with_numpy_blocked():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "numpy-free" in result.stdout
