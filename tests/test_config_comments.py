"""The config tree is the manual: every leaf key carries a comment, on its line or directly above.

`_target_` and `_partial_` are plumbing that the header comment of each file explains."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FILES = sorted(CONFIGS.rglob("*.yaml"))


def undocumented_keys(text: str) -> list[str]:
    """'line: key' for each leaf key (a scalar, a flow list or map, an empty list) with no comment."""
    lines = text.splitlines()
    missing = []

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{prefix}[{i}]")
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{prefix}.{key.value}" if prefix else key.value
                if key.value in ("_target_", "_partial_"):
                    continue
                if isinstance(value, yaml.ScalarNode) or value.flow_style or not value.value:
                    end = value.end_mark
                    inline = "#" in lines[end.line][end.column:]
                    above = key.start_mark.line > 0 and lines[key.start_mark.line - 1].lstrip().startswith("#")
                    if not (inline or above):
                        missing.append(f"{key.start_mark.line + 1}: {name}")
                else:
                    walk(value, name)

    walk(yaml.compose(text), "")
    return missing


@pytest.mark.parametrize("path", FILES, ids=[str(f.relative_to(CONFIGS)) for f in FILES])
def test_every_leaf_key_has_a_comment(path):
    assert undocumented_keys(path.read_text()) == []


def test_the_check_finds_an_undocumented_key():
    text = "# a file\nname: x                 # the name\nsize: 3\nlist:\n  - _target_: a.B   # a thing\n    p: 0.5\n"
    assert undocumented_keys(text) == ["3: size", "6: list[0].p"]
