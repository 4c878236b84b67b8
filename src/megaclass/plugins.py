"""Loading a user's component named ``"package.module:name"`` in a config."""

from __future__ import annotations

import importlib


def load_object(spec: str, what: str):
    """The object ``name`` of module ``package.module`` for ``spec = "package.module:name"``;
    ``what`` names it in the error (``"backbone factory"``, ``"sampler"``)."""
    module_name, colon, name = spec.partition(":")
    if not colon or not module_name or not name:
        raise ValueError(f"{what} {spec!r} must be written 'package.module:name'")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot load {what} {spec!r}: {error}") from None
