"""Write docs/reference/configuration.md, the configuration reference, from the typed schemas and conf/.

Every key of RunConfig (prune_runner/config.py), dotted as a command line writes it, with its type, its
default and its description. The description is the comment beside the field in config.py, after the comment
lines right above it (read with tokenize, so config.py stays plain dataclasses); a section's text is its
dataclass's docstring. The default is the value `prune-run` runs with when given no overrides (Hydra composes
the default groups), and the schema's own value where the default group option sets another. The config
groups come from conf/: each option with the first sentence of its YAML's top comment.

A leaf field with no comment is an error, so a new key is documented the day it is added, and
tests/test_config_reference.py fails when the committed page differs from what this script writes.

Run: .venv/bin/python scripts/gen_config_reference.py [--out PATH]   (or `make docs-reference`)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import inspect
import io
import re
import sys
import tokenize
import typing
from importlib import resources
from pathlib import Path

import yaml

from prune_runner import config as config_module
from prune_runner.cli import GROUPS  # also registers the RunConfig schema that the default config composes on
from prune_runner.config import RunConfig
from prune_runner.run.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "reference" / "configuration.md"
COMMAND = "python scripts/gen_config_reference.py"
# model= takes more than its YAML files (cli.preflight): said under the group's table
MODEL_NAMES_NOTE = ("Besides these, `model=` takes any torchvision classification model name (e.g. "
                    "`model=efficientnet_b0`) and `model=timm/<name>` for any timm model (the `timm` extra).")


# -- descriptions from the source ----------------------------------------------------------------------------
def field_comments(source: str) -> dict[tuple[str, str], str]:
    """{(class name, field name): description} of the annotated fields of every class in `source`.

    A field's description is its block of comment lines right above it (no blank line between), then the
    comment at the end of its own line(s)."""
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, whether the comment is the whole line)
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            own_line = not lines[row - 1][:col].strip()
            comments[row] = (tok.string.lstrip("#").strip(), own_line)
    out = {}
    for cls in (n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)):
        for node in cls.body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            above = []
            row = node.lineno - 1
            while row in comments and comments[row][1]:
                above.insert(0, comments[row][0])
                row -= 1
            beside = [comments[r][0] for r in range(node.lineno, node.end_lineno + 1)
                      if r in comments and not comments[r][1]]
            text = "; ".join(part for part in (" ".join(above), " ".join(beside)) if part)
            if text:
                out[(cls.name, node.target.id)] = text
    return out


def describe(cls: type, name: str, comments: dict) -> str:
    """The comment of field `name` of `cls`, from the class in its MRO that declares it; "" if none."""
    for owner in cls.__mro__:
        if (owner.__name__, name) in comments:
            return comments[(owner.__name__, name)]
    return ""


def type_name(tp) -> str:
    """A field's type as a YAML writer reads it: `int`, `float or null`, `list of str`, `any`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return " or ".join([type_name(a) for a in rest] + (["null"] if len(rest) < len(args) else []))
    if origin in (list, typing.List):
        return f"list of {type_name(args[0])}"
    if origin is typing.Literal:
        return " or ".join(yaml_value(a) for a in args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " or ".join(m.name for m in tp)
    if tp is typing.Any:
        return "any"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def yaml_value(value) -> str:
    """A value as it is written in YAML or on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    if value == "":
        return '""'
    return str(value)


def markdown(text: str) -> str:
    """`text` safe in a table cell: outside `code` spans, | < > * are escaped (`<run_dir>` is not HTML), and
    Python's None becomes null, as YAML and the command line write it."""
    parts = re.split(r"(`[^`]*`)", text)
    for i in range(0, len(parts), 2):
        parts[i] = (parts[i].replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")
                    .replace("<", "&lt;").replace(">", "&gt;"))
        parts[i] = re.sub(r"\bNone\b", "null", parts[i])
    return "".join(parts)


def sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def docstring(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    return "" if doc.startswith(f"{cls.__name__}(") else " ".join(doc.split())  # dataclass's own: no docstring


# -- the defaults ------------------------------------------------------------------------------------------
def composed_defaults() -> dict:
    """The config `prune-run` runs with when given no overrides, as a nested dict."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("prune_runner.conf", version_base="1.3"):
        return OmegaConf.to_container(compose("config"))


def schema_value(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# -- the page -----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Section:
    key: str  # dotted prefix; "" for the top-level keys
    text: str
    rows: list  # (key, type, default, description)


def sections(cls: type, prefix: str, composed: dict, comments: dict, text: str, missing: list) -> list:
    """The section of `cls` (its leaf keys), then one per nested dataclass, depth first."""
    hints = typing.get_type_hints(cls)
    own = Section(prefix, text, [])
    nested = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        desc = describe(cls, f.name, comments)
        if dataclasses.is_dataclass(hints[f.name]):
            child = hints[f.name]
            intro = " ".join(sentence(s) for s in (desc, docstring(child)) if s)  # why this part, then what it is
            nested += sections(child, key, composed[f.name], comments, intro, missing)
            continue
        if not desc:
            missing.append(key)
        default = f"`{yaml_value(composed[f.name])}`"
        schema = schema_value(f)
        if composed[f.name] != schema:
            default += f" (schema: `{yaml_value(schema)}`)"
        own.rows.append((key, type_name(hints[f.name]), default, desc))
    return ([own] if own.rows else []) + nested


def top_comment(text: str) -> str:
    """The first sentence of a YAML file's top comment (Hydra's `# @package` line skipped)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        line = line.lstrip("#").strip()
        if line.startswith("@package"):
            continue
        lines.append(line)
        if line.endswith("."):
            break
    return " ".join(lines)


def group_table(group: str, default: str | None) -> list[str]:
    folder = resources.files("prune_runner.conf") / group
    options = sorted((p for p in folder.iterdir() if p.name.endswith(".yaml")), key=lambda p: p.name)
    chosen = f"the default is `{group}={default}`" if default else "none by default"
    out = [f"### {group}", "", f"`{group}=<option>`; {chosen}.", "", "| option | what it is |", "|---|---|"]
    for path in options:
        out.append(f"| `{path.name[:-5]}` | {markdown(top_comment(path.read_text()))} |")
    if group == "model":
        out += ["", MODEL_NAMES_NOTE]
    return out + [""]


def default_choices() -> dict:
    """{group: option} of conf/config.yaml's defaults list (None: no option by default)."""
    defaults = yaml.safe_load((resources.files("prune_runner.conf") / "config.yaml").read_text())["defaults"]
    return {k: v for entry in defaults if isinstance(entry, dict) for k, v in entry.items() if k in GROUPS}


def render() -> str:
    """The page. Raises ValueError naming the keys that have no description in config.py."""
    comments = field_comments(Path(config_module.__file__).read_text())
    missing: list[str] = []
    secs = sections(RunConfig, "", composed_defaults(), comments, docstring(RunConfig), missing)
    if missing:
        raise ValueError(f"no description for {', '.join(missing)}: give each a comment in prune_runner/config.py "
                         "(beside the field, or on the lines right above it)")
    choices = default_choices()
    n_keys = sum(len(s.rows) for s in secs)
    out = [
        "# Configuration reference",
        "",
        f"<!-- generated by {COMMAND} from prune_runner/config.py and conf/: do not edit by hand;",
        "     tests/test_config_reference.py fails when this page and the sources differ -->",
        "",
        f"A run's config has {n_keys} keys. On the command line each is set by its dotted name "
        "(`prune-run prune.speed_up=3 schedule.finetune.epochs=50`), and a config group picks a YAML file "
        "that sets several at once (`prune-run model=resnet20 schedule=demo`); an `experiment` preset is "
        "applied last and can set any key. Hydra checks every key and type against the dataclasses in "
        "`prune_runner/config.py`, so a misspelt key or a wrong type fails at once with one line. "
        "`prune-run <overrides> --cfg job` prints the composed config without running anything.",
        "",
        "The default of a key is the value `prune-run` runs with when given no overrides: "
        + ", ".join(f"`{g}={v}`" for g, v in choices.items() if v) + ". "
        "Where that group option sets another value than the schema, the schema's value follows: a key that "
        "another option of the group leaves out takes it.",
        "",
        "## Config groups",
        "",
    ]
    for group in GROUPS:
        out += group_table(group, choices.get(group))
    out += ["## Keys", ""]
    for sec in [*secs[1:], secs[0]]:  # the run's own keys (the root section) after its parts
        out += [f"{'#' * (3 + sec.key.count('.'))} {sec.key or 'Top-level keys'}", ""]
        if sec.text:
            out += [markdown(sec.text), ""]
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        out += [f"| `{k}` | {t} | {d} | {markdown(desc)} |" for k, t, d, desc in sec.rows]
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PAGE, help=f"where to write the page (default: {PAGE})")
    args = parser.parse_args(argv)
    try:
        text = render()
    except ValueError as err:
        print(f"gen_config_reference: error: {err}", file=sys.stderr)
        return 2
    atomic_write_text(args.out, text)
    print(f"wrote {args.out} ({text.count(chr(10))} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
