"""What the project says about itself agrees: the version the CLI prints, the licence file."""

from __future__ import annotations

import re
import subprocess
import sys

from jobs.layout import PROJECT_ROOT

# The [project] table's two plain string keys (tomllib only comes with Python 3.11).
PYPROJECT = dict(re.findall(r'^(version|license) = "([^"]+)"$', (PROJECT_ROOT / "pyproject.toml").read_text(),
                            re.MULTILINE))


def test_version_flag_prints_the_packages_version():
    out = subprocess.run([sys.executable, "-m", "streamrec.cli", "--version"], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == f"streamrec {PYPROJECT['version']}"


def test_the_licence_file_is_the_licence_pyproject_declares():
    assert PYPROJECT["license"] == "Apache-2.0"
    text = (PROJECT_ROOT / "LICENSE").read_text()
    assert text.split("\n")[1].strip() == "Version 2.0, January 2004" and "Apache License" in text.split("\n")[0]
    assert "END OF TERMS AND CONDITIONS" in text
