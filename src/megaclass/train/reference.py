"""The configuration reference, ``docs/config.md``, generated from the config dataclasses: every
section, key and default, with the comment on the key's line in the source as its meaning.

    python -m megaclass.train.reference > docs/config.md
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re

from megaclass.train.config import RunConfig, _is_section, _toml_value, to_toml

_HEADER = """\
# Configuration reference

Generated from the configuration dataclasses by `python -m megaclass.train.reference >
docs/config.md` (a test fails when this file is stale). A run's configuration is these defaults,
updated by a TOML file (`megaclass train --config FILE.toml`), then by `--set section.key=value`
overrides (TOML values: `--set head.sampler='"ann"'`; bare words are strings). Every section
validates itself: a wrong key, type or value stops the run before it starts with a message
that names the key. The sections `[head.random]`, `[head.knn]` and `[head.ann]` are the samplers'
own dataclasses (`megaclass.samplers.Random`, `KNN`, `ANN`): their keys are the constructor
arguments, explained in full in the docstrings; only the section of `head.sampler` is used.
`megaclass bench heads --config FILE.toml --set ...` times the head that a configuration trains.
"""


def explained_toml(config: RunConfig) -> str:
    """``config`` as TOML with each key's meaning as a comment on its line."""
    return to_toml(config, comment=lambda cls, key: _line_comments(cls).get(key))


def config_reference() -> str:
    """The reference as Markdown."""
    return _HEADER + "".join(_section(RunConfig(), ""))


def _section(section, name: str) -> list[str]:
    """The table of ``section``'s keys (named ``name``, top level if empty), then its
    subsections'."""
    cls = type(section)
    comments = _line_comments(cls)
    title = f"`[{name}]`" if name else "top level"
    summary = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    rows, subsections = [], []
    for f in dataclasses.fields(cls):
        if _is_section(f):
            path = f"{name}.{f.name}" if name else f.name
            subsections += _section(getattr(section, f.name), path)
            continue
        if f.name not in comments:
            raise ValueError(f"{cls.__name__}.{f.name} has no comment on its line to document it")
        value = _toml_value(getattr(section, f.name))
        meaning = comments[f.name].replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{value}` | {meaning} |\n")
    table = f"\n## {title}\n\n{summary}\n\n| key | default | meaning |\n|---|---|---|\n"
    return [table + "".join(rows), *subsections]


@functools.cache
def _line_comments(cls) -> dict[str, str]:
    """Field name -> the comment on its line in ``cls``'s source."""
    source = inspect.getsource(cls)
    return dict(re.findall(r"^    (\w+): [^=\n]+ = [^\n]*?  # ([^\n]*)$", source, re.MULTILINE))


if __name__ == "__main__":
    print(config_reference(), end="")
