"""Check the import plan in pyproject.toml with import-linter (`make lint` runs this).

import-linter (through grimp) reads packages, and the lesson's modules sit
at the top level as plain files, so that `python server.py` works. This
shim shows it the same code as packages: in a temporary directory, each
top-level module becomes a package of one file (`hub/__init__.py`, a link
to `hub.py`) and each folder is linked as it is. `import hub` then means
the same module to import-linter as it does to Python, and the contracts
in pyproject.toml can name every module. Nothing is copied or changed.

Usage: .venv/bin/python tools/lint_imports.py   (exit status: lint-imports')
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("cluster", "access", "terminal")  # the chapters a first reading skips


def shim(into: Path) -> None:
    """Every top-level module as a one-file package, every folder as itself."""
    for module in ROOT.glob("*.py"):
        package = into / module.stem
        package.mkdir()
        (package / "__init__.py").symlink_to(module)
    for folder in FOLDERS:
        (into / folder).symlink_to(ROOT / folder, target_is_directory=True)
    (into / "pyproject.toml").symlink_to(ROOT / "pyproject.toml")


def main() -> int:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    with tempfile.TemporaryDirectory(prefix="lint-imports-") as tmp:
        shim(Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp}
        return subprocess.run([str(lint_imports), "--no-cache"], cwd=tmp, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
