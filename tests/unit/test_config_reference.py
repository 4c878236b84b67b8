"""docs/config.md is generated from the config dataclasses and must not go stale."""

from pathlib import Path

import pytest

from megaclass.train import reference
from megaclass.train.config import RunConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_the_committed_reference_is_the_generated_one():
    assert DOC.read_text() == reference.config_reference(), (
        "docs/config.md is stale: python -m megaclass.train.reference > docs/config.md"
    )


def test_every_key_of_every_section_is_in_the_reference():
    text = DOC.read_text()
    for section in ("[data]", "[model]", "[head]", "[head.random]", "[head.knn]", "[head.ann]"):
        assert f"## `{section}`" in text
    for key in ("budget", "random_share", "num_lists", "head_row_norm", "stop_on_collapse"):
        assert f"| `{key}` |" in text


def test_a_key_without_a_comment_cannot_be_documented(monkeypatch):
    monkeypatch.setattr(reference, "_line_comments", lambda cls: {})
    with pytest.raises(ValueError, match=r"RunConfig\.name has no comment"):
        reference._section(RunConfig(), "")
