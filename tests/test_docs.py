"""The documentation's links and commands point at things that exist.

- every relative link of README.md and docs/**/*.md resolves to a file, and an anchor to a heading of that file;
- every command of a ```bash block in README.md and docs/how-to/*.md that runs ``python -m X``,
  ``.venv/bin/python -m X``, ``torchrun ... -m X`` or ``python X.py`` names a module or script that exists, and every
  ``--flag`` it passes appears in that module's ``--help`` (run once per module, in a subprocess, cached);
- every ``scripts/*.sh`` those pages name exists;
- README.md stays short and shows the Kaggle upload and the competition-data training within its first 60 lines;
- run letters ("run Q") and stop numbers ("stop 32") appear only in docs/history/ and docs/results/model-card.md;
- generated pages (docs/reference/configuration.md) equal what their generator prints now.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
ALL_DOCS = [README, *sorted((REPO / "docs").rglob("*.md"))]
COMMAND_DOCS = [README, *sorted((REPO / "docs" / "how-to").glob("*.md"))]
HISTORY_OK = [REPO / "docs" / "history", REPO / "docs" / "results" / "model-card.md"]

# Generated pages and the command that writes each.
GENERATED = {"docs/reference/configuration.md": ("train_offline.config_doc", "--markdown")}
# Build outputs a doc may run: they exist only after build_kernel.py; their CLI is kernel.gateway's.
BUILT_SCRIPTS = {"dist/kernel/rsna-aneurysm-kernel.py": "kernel.gateway"}

RUN_LETTER = re.compile(r"\b[Rr]uns? [A-Z]\b|\b[Ss]tops? \d+\b")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```(\w*)\s*$")


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def split_blocks(text: str) -> tuple[list[tuple[int, str]], list[tuple[str, int, list[str]]]]:
    """(prose lines with their numbers, fenced blocks as (language, first line number, lines))."""
    prose: list[tuple[int, str]] = []
    blocks: list[tuple[str, int, list[str]]] = []
    current: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line.strip())
        if current is None and match:
            current = (match.group(1), number + 1, [])
        elif current is not None and line.strip() == "```":
            blocks.append(current)
            current = None
        elif current is not None:
            current[2].append(line)
        else:
            prose.append((number, line))
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    prose, _ = split_blocks(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


# ---------------------------------------------------------------------------------------------------------- links


def link_cases() -> list[tuple[str, int, str]]:
    cases = []
    for doc in ALL_DOCS:
        prose, _ = split_blocks(doc.read_text(encoding="utf-8"))
        for number, line in prose:
            for target in LINK.findall(line):
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    cases.append((rel(doc), number, target))
    return cases


@pytest.mark.parametrize(("doc", "line", "target"), link_cases(), ids=lambda v: str(v))
def test_link_resolves(doc: str, line: int, target: str) -> None:
    path_part, _, anchor = target.partition("#")
    source = REPO / doc
    dest = (source.parent / path_part).resolve() if path_part else source
    where = f"{doc}:{line}: link {target!r}"
    assert dest.is_relative_to(REPO), f"{where} leaves the repository"
    if not dest.exists():
        generator = GENERATED.get(dest.relative_to(REPO).as_posix())
        hint = f" (generate it: python -m {generator[0]} {generator[1]})" if generator else ""
        pytest.fail(f"{where}: {dest.relative_to(REPO)} does not exist{hint}")
    if anchor:
        assert dest.suffix == ".md", f"{where}: anchor into a non-markdown file"
        assert anchor in anchors(dest), f"{where}: no heading #{anchor} in {rel(dest)} (has {sorted(anchors(dest))})"


# ------------------------------------------------------------------------------------------------------- commands


def bash_commands(doc: Path) -> list[tuple[int, str]]:
    """(line number, command) of every ```bash block: continuations joined, comments dropped, split at && ; |."""
    _, blocks = split_blocks(doc.read_text(encoding="utf-8"))
    commands = []
    for language, first, lines in blocks:
        if language not in ("bash", "sh", "shell", "console"):
            continue
        joined: list[tuple[int, str]] = []
        pending = ""
        start = first
        for offset, line in enumerate(lines):
            if not pending:
                start = first + offset
            stripped = strip_comment(line)
            if stripped.rstrip().endswith("\\"):
                pending += stripped.rstrip()[:-1] + " "
                continue
            joined.append((start, pending + stripped))
            pending = ""
        if pending:
            joined.append((start, pending))
        for number, text in joined:
            for part in re.split(r"&&|\|\||;|\|", text):
                if part.strip():
                    commands.append((number, part.strip()))
    return commands


def strip_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (a # that starts a word, outside quotes)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def parse_command(text: str) -> tuple[str, str, list[str]] | None:
    """("module" | "script", name, flags) of a python / torchrun command; None for any other command."""
    try:
        tokens = shlex.split(text)
    except ValueError:
        tokens = text.split()
    tokens = [t.strip("[]") for t in tokens]
    tokens = [t for t in tokens if t]
    for i, token in enumerate(tokens):
        name = token.rsplit("/", 1)[-1]
        if name == "torchrun" or re.fullmatch(r"python(3(\.\d+)?)?", name):
            rest = tokens[i + 1:]
            if name == "torchrun":
                if "-m" not in rest:
                    return None
                rest = rest[rest.index("-m"):]
            if rest[:1] == ["-m"] and len(rest) > 1:
                return "module", rest[1], flags_of(rest[2:])
            if rest and rest[0].endswith(".py"):
                return "script", rest[0], flags_of(rest[1:])
            return None
    return None


def flags_of(tokens: list[str]) -> list[str]:
    return [t.split("=", 1)[0] for t in tokens if re.fullmatch(r"--[A-Za-z][\w-]*(=.*)?", t)]


def command_cases() -> list[tuple[str, int, str]]:
    return [(rel(doc), number, text) for doc in COMMAND_DOCS for number, text in bash_commands(doc)
            if parse_command(text) is not None]


@functools.cache
def help_text(kind: str, name: str) -> tuple[int, str]:
    argv = [sys.executable, "-m", name, "--help"] if kind == "module" else [sys.executable, name, "--help"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def has_flag(module: str, flag: str) -> bool:
    if not module_exists(module):
        return False
    code, text = help_text("module", module)
    return code == 0 and re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


@pytest.fixture(scope="session", autouse=False)
def prefetched_help() -> None:
    """Run every module's --help once, two at a time (each imports torch or pydicom: about a second apiece)."""
    wanted = set()
    for _, _, text in command_cases():
        kind, name, flags = parse_command(text)
        if kind == "script" and name in BUILT_SCRIPTS:
            kind, name = "module", BUILT_SCRIPTS[name]
        if flags and (kind == "script" or module_exists(name)):
            wanted.add((kind, name))
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda kn: help_text(*kn), sorted(wanted)))


@pytest.mark.parametrize(("doc", "line", "command"), command_cases(), ids=lambda v: str(v)[:60])
def test_command_names_existing_module_and_flags(doc: str, line: int, command: str, prefetched_help: None) -> None:
    kind, name, flags = parse_command(command)
    where = f"{doc}:{line}: {command!r}"
    if kind == "script":
        if name in BUILT_SCRIPTS:  # a build output: its CLI is the gateway's
            kind, name = "module", BUILT_SCRIPTS[name]
        else:
            assert (REPO / name).is_file(), f"{where}: script {name} does not exist"
    if kind == "module":
        assert module_exists(name), f"{where}: module {name} does not exist"
    if not flags:
        return
    code, text = help_text(kind, name)
    assert code == 0, f"{where}: `{name} --help` failed (exit {code}):\n{text[-2000:]}"
    missing = [f for f in flags if re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text) is None]
    assert not missing, f"{where}: {name} --help has no {missing}"


@pytest.mark.parametrize("doc", [rel(d) for d in COMMAND_DOCS])
def test_named_scripts_exist(doc: str) -> None:
    text = (REPO / doc).read_text(encoding="utf-8")
    missing = sorted({s for s in re.findall(r"\bscripts/[\w.-]+\.sh\b", text) if not (REPO / s).is_file()})
    assert not missing, f"{doc} names scripts that do not exist: {missing}"


# ---------------------------------------------------------------------------------------------------- the README


def test_readme_is_short_and_starts_with_the_tasks() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) <= 8192, f"README.md is {len(text.encode())} bytes; at most 8 KB (move text to docs/)"
    head = "\n".join(text.splitlines()[:60])
    for needle in ("scripts/main.sh", "scripts/test.sh", "kaggle kernels push", "kaggle datasets create",
                   "-m train_offline.train --config full", "-m train_offline.precache_all --config full"):
        assert needle in head, f"README.md: {needle!r} is not within the first 60 lines"


# ------------------------------------------------------------------------------------------------------ run letters


def test_run_letters_only_in_the_history() -> None:
    found = []
    for doc in ALL_DOCS:
        if any(doc == ok or ok in doc.parents for ok in HISTORY_OK):
            continue
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for match in RUN_LETTER.finditer(line):
                found.append(f"{rel(doc)}:{number}: {match.group(0)!r}")
    assert not found, "run letters / stop numbers outside docs/history/ and the model card:\n" + "\n".join(found)


def test_the_old_docs_are_gone() -> None:
    old = ["docs/training.md", "docs/kernel.md", "docs/ARCHITECTURE.md", "docs/phantoms.md"]
    assert not [p for p in old if (REPO / p).exists()], "the old docs live in docs/{how-to,reference,results,history}"


@pytest.mark.parametrize("page", sorted(GENERATED))
def test_generated_page_is_current(page: str) -> None:
    module, flag = GENERATED[page]
    proc = subprocess.run([sys.executable, "-m", module, flag], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (REPO / page).read_text(encoding="utf-8") == proc.stdout, \
        f"{page} is stale: regenerate it with python -m {module} {flag} > {page}"
