"""README.md and docs/*.md: every link and project path they name exists, every command they show
parses, and the README stays short.

What counts as a path or a command (the rule a writer follows):
- Links: every markdown link or image whose target is not a URL, relative to the file that holds
  it; a `#heading` part must name a heading of the target file.
- Paths: an inline code span holding one path whose first part is a tracked top-level entry of
  the project (`configs/paper.yaml`, `systems/`, `docs/x.md`), or a bare `*.py` / `*.ipynb` name,
  which must then be a top-level file. Paths are relative to the repository root. Run-time outputs
  (`runs/...`, `cache/...`, `demo/...`), placeholders (`<id>-t1n.nii.gz`, `RUN/...`, `…`) and other
  projects' files (name them with their repository: `keras/src/losses/loss.py`) are not checked.
- Commands: every `python SCRIPT.py ...` or `python -m MODULE ...` in a fenced code block or an
  inline code span. The script must exist and its main()'s parser must accept the arguments; a
  command with an elision (`…`, `...`) or a shell variable (`$i`) only has its --flags checked.
  Tokens of a command that name project paths must exist, except the value of --out/--output.
  `make ...`, `pip ...` and other programs are not checked.

The parsers run in one child process (this file run as a script) that imports every named command
once, so TensorFlow is imported once; each main() stops right after parse_args.
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 200
ELISIONS = ("…", "...")
OUTPUT_FLAGS = ("--out", "--output")
PYTHON = re.compile(r"^(?:.*/)?python(?:3(?:\.\d+)?)?$")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def top_level() -> set[str]:
    """The project's tracked top-level entries (git), or, outside a git checkout, those on disk."""
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
        names = listed.stdout.split() if listed.returncode == 0 else []
    except OSError:  # no git
        names = []
    if not names:
        ignored = [line.strip().strip("/") for line in (ROOT / ".gitignore").read_text().splitlines()
                   if line.strip() and not line.startswith("#")]
        names = [p.name for p in ROOT.iterdir() if not p.name.startswith(".")
                 and not any(fnmatch.fnmatch(p.name, pattern) for pattern in ignored)]
    return {name.split("/")[0] for name in names} - {".venv"}


def split_markdown(text: str) -> tuple[str, list[str]]:
    """(the prose with fenced blocks blanked out, the fenced blocks' lines)."""
    prose, code, fence = [], [], None
    for line in text.splitlines():
        marker = re.match(r"^\s*(```+|~~~+)", line)
        if fence is None and marker:
            fence = marker.group(1)
            prose.append("")
        elif fence is not None and line.strip().startswith(fence):
            fence = None
            prose.append("")
        elif fence is not None:
            code.append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), code


def inline_spans(prose: str) -> list[str]:
    """The inline code spans of the prose (a span may wrap over lines)."""
    return [" ".join(m.group(2).split()) for m in re.finditer(r"(`+)(.+?)\1", prose, re.DOTALL)]


def links(prose: str) -> list[str]:
    """Targets of markdown links and images, reference definitions and HTML src/href."""
    without_code = re.sub(r"(`+).+?\1", "", prose, flags=re.DOTALL)
    found = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", without_code)
    found += re.findall(r"^\s*\[[^\]]+\]:\s*(\S+)", without_code, re.MULTILINE)
    found += re.findall(r"(?:src|href)=\"([^\"]+)\"", without_code)
    return found


def slugs(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a markdown file."""
    seen, anchors = {}, set()
    for line in split_markdown(path.read_text())[0].splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def link_problem(document: Path, target: str) -> str | None:
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
        return None  # a URL (https:, mailto:, ...)
    name, _, anchor = target.partition("#")
    path = (document.parent / name).resolve() if name else document
    if not path.exists():
        return f"link to {target}: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} does not exist"
    if anchor and path.suffix == ".md" and anchor not in slugs(path):
        return f"link to {target}: no heading #{anchor} in {path.name}"
    return None


def names_project_path(token: str, top: set[str]) -> bool:
    """Whether a token is a project path under the rule above (placeholders never are)."""
    if not token or any(c in token for c in "<>*{}$…|") or "..." in token or " " in token:
        return False
    token = token.split("::")[0]
    if "/" in token:
        return token.split("/")[0] in top
    return token.endswith((".py", ".ipynb"))


def shell_segments(line: str) -> list[list[str]]:
    """A shell line's simple commands as token lists: redirections and comments dropped."""
    line = re.sub(r"(?<=\s)\d*(?:>>?|<)(?:&\d+|\s*[^\s;&|]+)", " ", line)
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    segments, current = [], []
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: read it as plain words
        tokens = line.split()
    for token in tokens:
        if token and set(token) <= set(";&|"):
            segments.append(current)
            current = []
        else:
            current.append(token)
    return [s for s in segments + [current] if s]


def python_command(tokens: list[str]) -> dict | None:
    """{'script'|'module', 'argv', 'elided'} for a `python ...` segment, else None."""
    start = next((i for i, t in enumerate(tokens) if PYTHON.match(t)), None)
    if start is None:
        return None
    rest = tokens[start + 1:]
    while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
        rest = rest[1:]
    if not rest or rest[0] == "-c":
        return None
    if rest[0] == "-m":
        if len(rest) < 2:
            return None
        command, argv = {"module": rest[1]}, rest[2:]
    else:
        command, argv = {"script": rest[0]}, rest[1:]
    elided = any(t in ELISIONS or "…" in t or "$" in t for t in argv)
    command["argv"] = [t for t in argv if t not in ELISIONS]
    command["elided"] = elided
    return command


def logical_lines(code: list[str]) -> list[str]:
    """Code lines with backslash continuations joined."""
    lines, pending = [], ""
    for line in code:
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            lines.append(pending + line)
            pending = ""
    return lines + ([pending] if pending else [])


def shown_commands(document: Path) -> list[tuple[str, dict]]:
    """(the line as shown, the command) for every python command of a document."""
    prose, code = split_markdown(document.read_text())
    lines = logical_lines(code) + [s for s in inline_spans(prose) if " " in s]
    found = []
    for line in lines:
        for segment in shell_segments(line.strip().removeprefix("$ ")):
            command = python_command(segment)
            if command:
                found.append((" ".join(segment), command))
    return found


def project_module(command: dict, top: set[str]) -> bool:
    return "script" in command or command["module"].split(".")[0] in top


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


def test_links_and_paths_exist():
    top, problems = top_level(), []
    for document in documents():
        where = document.relative_to(ROOT)
        prose, _ = split_markdown(document.read_text())
        problems += [f"{where}: {p}" for t in links(prose) if (p := link_problem(document, t))]
        for span in inline_spans(prose):
            if names_project_path(span, top) and not (ROOT / span.split("::")[0]).exists():
                problems.append(f"{where}: `{span}` does not exist")
        for line, command in shown_commands(document):
            values = command["argv"] + [command.get("script", "")]
            outputs = {command["argv"][i + 1] for i, t in enumerate(command["argv"][:-1])
                       if t in OUTPUT_FLAGS}
            for token in values:
                token = token.split("=", 1)[-1]
                if (token not in outputs and names_project_path(token, top)
                        and not (ROOT / token).exists()):
                    problems.append(f"{where}: `{line}`: {token} does not exist")
    assert not problems, "\n".join(problems)


def test_commands_parse():
    top, shown = top_level(), []
    for document in documents():
        shown += [(f"{document.relative_to(ROOT)}: `{line}`", command)
                  for line, command in shown_commands(document)
                  if project_module(command, top)]
    assert shown, "no python command found in README.md and docs/"
    child = subprocess.run([sys.executable, __file__], cwd=ROOT, capture_output=True, text=True,
                           input=json.dumps([command for _, command in shown]), timeout=300,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(child.stdout.splitlines()[-1])
    problems = [f"{where}: {problem}" for (where, _), problem in zip(shown, results) if problem]
    assert not problems, "\n".join(problems)


# The child process: parse each command with its script's own parser.

class Parsed(BaseException):
    """Raised from the patched parse_args: main() stops once its arguments are parsed."""


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    names = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names |= option_strings(sub)
    return names


def load(command: dict):
    """The command's module, imported once (bench/ scripts under names of their own)."""
    if "module" in command:
        return importlib.import_module(command["module"])
    path = (ROOT / command["script"]).resolve()
    if not path.exists():
        raise FileNotFoundError(f"{command['script']} does not exist")
    if path.parent == ROOT:
        return importlib.import_module(path.stem)
    name = "_docs_" + "_".join(path.relative_to(ROOT).with_suffix("").parts)
    if name not in sys.modules:
        if str(path.parent) not in sys.path:
            sys.path.append(str(path.parent))  # after the project: its namesakes do not shadow
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def parse_problem(command: dict) -> str | None:
    """None when the command's parser accepts its arguments, else what it said."""
    try:
        module = load(command)
    except BaseException as error:  # noqa: BLE001 - any failure to import is the finding
        return f"cannot import: {type(error).__name__}: {error}"
    if not hasattr(module, "main"):
        return "has no main()"
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        if command["elided"]:
            known = option_strings(self)
            unknown = [t for t in args or [] if t.startswith("--") and t.split("=")[0] not in known]
            if unknown:
                self.error(f"unrecognized arguments: {' '.join(unknown)}")
        else:
            original(self, args, namespace)
        raise Parsed

    argparse.ArgumentParser.parse_args = parse_args
    sys.argv = [command.get("script") or command["module"]]  # the prog name in its messages
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(said):
            module.main(list(command["argv"]))
    except Parsed:
        return None
    except SystemExit as exit:
        if exit.code in (0, None):
            return None
        return (said.getvalue().strip().splitlines() or [f"exit status {exit.code}"])[-1]
    except BaseException as error:  # noqa: BLE001
        return f"{type(error).__name__}: {error}"
    finally:
        argparse.ArgumentParser.parse_args = original
    return "main() returned without parsing its arguments"


def child() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    commands = json.loads(sys.stdin.read())
    print(json.dumps([parse_problem(command) for command in commands]))


if __name__ == "__main__":
    child()
