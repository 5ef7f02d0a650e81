"""The configuration reference (docs/reference/configuration.md) is generated from prune_runner/config.py and
conf/ by scripts/gen_config_reference.py: the committed page must be what the script writes now, name every
key of RunConfig with a description, and list every option of every config group."""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import textwrap
from typing import List, Optional

import pytest
from conftest import REPO, run_main, script_main
from omegaconf import OmegaConf

from prune_runner.cli import GROUPS, group_options
from prune_runner.config import RunConfig, dotted

PAGE = REPO / "docs" / "reference" / "configuration.md"
MAIN = script_main("gen_config_reference")
GEN = sys.modules[MAIN.__module__]


@pytest.fixture(scope="module")
def page() -> str:
    return PAGE.read_text()


def test_committed_page_is_what_the_script_writes(page):
    fresh = GEN.render()
    diff = "\n".join(list(difflib.unified_diff(page.splitlines(), fresh.splitlines(), "committed", "generated",
                                               lineterm=""))[:30])
    assert page == fresh, (f"{PAGE.relative_to(REPO)} is out of date with prune_runner/config.py or conf/: run "
                           f"`python scripts/gen_config_reference.py` (make docs-reference), commit the page\n{diff}")


def test_every_leaf_key_has_a_row_with_a_type_default_and_description(page):
    leaves = set(dotted(OmegaConf.to_container(OmegaConf.structured(RunConfig))))
    rows = {m[0]: m[1:] for m in re.findall(r"^\| `([\w.]+)` \| (.+?) \| (.+?) \| (.+?) \|$", page, re.MULTILINE)}
    assert len(leaves) > 70 and set(rows) == leaves, sorted(set(rows) ^ leaves)
    assert rows["prune.speed_up"] == ("float", "`2.0`", "the target speed-up (see `target`)")
    # the default is what prune-run composes with no overrides, with the schema's own value where they differ
    assert rows["schedule.pretrain.epochs"][1] == "`200` (schema: `1`)"
    assert rows["method.reg"][0] == "float or null"


def test_every_option_of_every_group_is_listed(page):
    groups = page.split("\n## Config groups\n", 1)[1].split("\n## Keys\n", 1)[0]
    for group in GROUPS:
        section = groups.split(f"\n### {group}\n", 1)[1].split("\n### ", 1)[0]
        listed = re.findall(r"^\| `(\w+)` \| (.+) \|$", section, re.MULTILINE)
        assert [name for name, _ in listed] == group_options(group) and all(text for _, text in listed), group
    assert "`model=resnet56`" in groups and "none by default" in groups  # the default option of each group


def test_descriptions_come_from_the_comments_beside_and_above_a_field():
    source = textwrap.dedent('''
        class A:
            # above, first line
            # above, second line
            x: int = 1  # beside
            y: int = 2

            # a comment with a blank line after it belongs to no field

            z: int = 3
            w: Optional[int] = None  # only beside
    ''')
    assert GEN.field_comments(source) == {("A", "x"): "above, first line above, second line; beside",
                                          ("A", "w"): "only beside"}


@dataclasses.dataclass
class _Inner:
    rate: float = 0.5  # not read: the test gives the comments as a dict


@dataclasses.dataclass
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    names: List[str] = dataclasses.field(default_factory=list)
    size: Optional[int] = None


def test_a_field_without_a_description_is_named():
    missing: list = []
    secs = GEN.sections(_Outer, "", {"inner": {"rate": 0.25}, "names": [], "size": None},
                        {("_Outer", "size"): "side in pixels"}, "", missing)
    assert missing == ["inner.rate", "names"]
    assert [s.key for s in secs] == ["", "inner"]
    assert secs[0].rows == [("names", "list of str", "`[]`", ""), ("size", "int or null", "`null`", "side in pixels")]
    assert secs[1].rows == [("inner.rate", "float", "`0.25` (schema: `0.5`)", "")]


def test_markdown_escapes_table_syntax_and_html_outside_code():
    assert GEN.markdown("mean | max; <run_dir>/x; |w * g|; `a|b`; None = auto") == (
        "mean \\| max; &lt;run_dir&gt;/x; \\|w \\* g\\|; `a|b`; null = auto")


def test_main_writes_the_page(tmp_path):
    out = tmp_path / "ref" / "configuration.md"
    done = run_main(MAIN, ["--out", out])
    assert done.returncode == 0 and done.stdout.startswith(f"wrote {out} (")
    assert out.read_text() == GEN.render()
    assert [p.name for p in out.parent.iterdir()] == ["configuration.md"]  # no temp file left beside it
