"""The configuration reference (docs/reference/configuration.md), generated from ``config.DEFAULTS`` and its comments
and from the shipped config files, so the page cannot drift from the code (tests/test_docs.py compares them).

    python -m train_offline.config_doc --markdown > docs/reference/configuration.md
    python -m train_offline.config_doc demo --set fine.epochs=2      # a resolved config, as training sees it
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import tokenize
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from train_offline import config as cfg

__all__ = ["config_markdown", "key_comments", "main"]

SHIPPED = ("demo", "full", "smoke", "loso")


def key_comments() -> dict[str, str]:
    """Dotted key -> its comment in ``config.py``'s ``DEFAULTS`` (full-line comments right above the key, then the
    comment at the end of its line)."""
    source = Path(cfg.__file__).read_text()
    comments: dict[int, str] = {}
    full_line: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
            if not tok.line[: tok.start[1]].strip():
                full_line.add(tok.start[0])
    tree = ast.parse(source)
    named = {ast.unparse(n.targets[0] if isinstance(n, ast.Assign) else n.target): n.value for n in tree.body
             if isinstance(n, ast.AnnAssign | ast.Assign) and isinstance(n.value, ast.Dict)}
    out: dict[str, str] = {}

    def comment_of(key: ast.expr, value: ast.expr) -> str:
        above, line = [], key.lineno - 1
        while line in full_line:
            above.insert(0, comments[line])
            line -= 1
        trailing = comments.get(value.end_lineno) if value.end_lineno not in full_line else None
        nested = isinstance(value, ast.Dict | ast.Name)
        return " ".join([*above, *([trailing] if trailing and not nested else [])])

    def walk(node: ast.Dict, prefix: str) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            if key is None:  # {**SHARED, ...}: the shared mapping's keys, with their own comments
                walk(named[ast.unparse(value)], prefix)
                continue
            name = f"{prefix}{ast.literal_eval(key)}"
            out[name] = comment_of(key, value)
            if isinstance(value, ast.Name) and value.id in named:  # a module-level mapping shared by sections
                walk(named[value.id], f"{name}.")
            elif isinstance(value, ast.Dict):
                walk(value, f"{name}.")

    walk(named["DEFAULTS"], "")
    return out


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value and key != "normalisation":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _cell(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text.replace("|", "\\|")


def config_markdown() -> str:
    """The whole reference page: one table per section, default and each shipped config's value, the meaning."""
    comments = key_comments()
    defaults = _flat(cfg.DEFAULTS)
    shipped = {name: _flat(cfg._load_raw(cfg.resolve_config_path(name), ())) for name in SHIPPED}
    lines = ["# Configuration reference", "",
             "Generated from `train_offline/config.py` (`DEFAULTS` and its comments) and the config files in",
             "`train_offline/configs/` by `python -m train_offline.config_doc --markdown`; do not edit by hand.", "",
             "A config file names its `base:` and overrides keys of it; an unknown key, a wrong type or an absolute "
             "path is refused with the list of known keys. `--set KEY=VALUE` overrides a key on the command line "
             "(e.g. `--set fine.epochs=12`). The resolved config is saved beside every checkpoint (`config.yaml`) "
             "and travels in the manifest. A blank shipped-config cell means the default.", ""]
    sections: dict[str, list[str]] = {}
    for key in defaults:
        sections.setdefault(key.split(".")[0] if "." in key else "", []).append(key)
    for section, keys in sections.items():
        title = f"`{section}`" if section else "top level"
        lines += [f"## {title}", ""]
        if section and comments.get(section):
            lines += [comments[section], ""]
        lines += ["| key | default | " + " | ".join(SHIPPED) + " | meaning |",
                  "|---|---|" + "---|" * len(SHIPPED) + "---|"]
        for key in keys:
            values = [_cell(shipped[name][key]) if key in shipped[name] else "" for name in SHIPPED]
            meaning = comments.get(key, "")
            lines.append(f"| `{key}` | {_cell(defaults[key])} | " + " | ".join(values) + f" | {meaning} |")
        lines.append("")
    lines += ["## Renamed keys", "", "Saved configs, manifests and config files may hold the old names; they are read "
              "as the new ones.", "", "| old | new |", "|---|---|"]
    lines += [f"| `{section}.{old}` | `{section}.{new}` |" for (section, old), new in cfg.RENAMED_KEYS.items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Print a resolved config as YAML, or (``--markdown``) the configuration reference."""
    parser = argparse.ArgumentParser(prog="python -m train_offline.config_doc", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="demo", help="config name or YAML path to resolve (default demo)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override values, e.g. fine.epochs=2")
    parser.add_argument("--markdown", action="store_true",
                        help="print the configuration reference (docs/reference/configuration.md) instead")
    args = parser.parse_args(argv)
    try:
        if args.markdown:
            print(config_markdown(), end="")
        else:
            print(yaml.safe_dump(cfg.load_config(args.config, cfg.parse_overrides(args.set)), sort_keys=False), end="")
    except cfg.ConfigError as exc:
        print(f"config failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
