"""The one-way flow (cli -> engine -> report -> diff -> mapping -> sources -> keys -> rules/config) holds."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_import_layers_contract_is_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is a dev dependency: pip install -e '.[dev]'"
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout


def test_pyflakes_finds_nothing():
    """Undefined names, a function defined twice in one module (one such shadowed `_after` once broke
    --changed-since), unused imports: ruff's pyflakes rules, over the code, its tests and benches."""
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert exe, "ruff is a dev dependency: pip install -e '.[dev]'"
    out = subprocess.run([exe, "check", "--select", "F", "--output-format", "concise", "reconciler", "tests", "bench",
                          "demo"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
