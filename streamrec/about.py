"""What this installation is: the package version, as the installer recorded it (pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed ``streamrec`` version; ``0+unknown`` for a source tree that was never installed."""
    try:
        return version("streamrec")
    except PackageNotFoundError:
        return "0+unknown"
