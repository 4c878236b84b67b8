"""Errors about data paths that say where a relative path was looked up."""

from __future__ import annotations

from pathlib import Path


def missing_path_error(path: Path, what: str) -> ValueError:
    """``what path does not exist`` (+ the folder a relative ``path`` was looked up in)."""
    return ValueError(f"{what} {path} does not exist{_looked_up_in(path)}")


def wrong_kind_error(path: Path, what: str, expected: str) -> ValueError:
    """``what path is not expected`` (a folder where a file is wanted, or the other way)."""
    found = "a folder" if path.is_dir() else "not a folder"
    return ValueError(f"{what} {path} is {found}; expected {expected}{_looked_up_in(path)}")


def _looked_up_in(path: Path) -> str:
    return "" if path.is_absolute() else f" (a relative path, looked up in {Path.cwd()})"
