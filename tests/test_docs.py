"""The docs cannot drift from the programs: every command written in README.md and docs/*.md goes through its
program's real argument parser (and no further), every Python snippet compiles and the kvjax names it imports
exist, and every relative link leads to a file.

Commands are read from shell code blocks (fenced ```bash, ```sh, ```console or bare ```, and 4-space indented
blocks): lines joined over trailing backslashes, split on `&&`, without `# comments`, a leading `$ ` or
leading `NAME=value` environment assignments. A command is checked when its program is `python -m MODULE`
(python, python3 or .venv/bin/python), `python bench/SCRIPT.py`, or a console script (kvjax-sample,
kvjax-train, kvjax-convert, kvjax-app: the modules sample, train, convert, sample.app); pip, venv, pytest and
git are not. The module runs in this process with `parse_args` patched to stop it, by a private exception,
right after a successful parse: nothing is loaded, compiled or written.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.util
import os
import pathlib
import re
import runpy
import shlex
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHONS = {"python", "python3", ".venv/bin/python", ".venv/bin/python3"}
CONSOLE_SCRIPTS = {"kvjax-sample": "sample", "kvjax-train": "train", "kvjax-convert": "convert", "kvjax-app": "sample.app"}
NOT_CHECKED = {"pip", "venv", "pytest"}  # python -m modules that are not ours
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
PYTHON_LANGUAGES = {"python", "py"}
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@dataclasses.dataclass(frozen=True)
class Block:
  doc: str  # path relative to the repository root
  line: int  # 1-based line of the block's first line
  language: str
  lines: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Command:
  doc: str
  line: int
  text: str  # as written (continuations joined)
  module: str | None  # python -m MODULE
  script: str | None  # python SCRIPT.py
  args: tuple[str, ...]

  @property
  def where(self) -> str:
    return f"{self.doc}:{self.line}"


def code_blocks(path: pathlib.Path) -> list[Block]:
  """Fenced blocks (any indentation) and 4-space indented blocks (after a blank line) of a Markdown file."""
  doc = str(path.relative_to(ROOT))
  blocks, lines = [], path.read_text().splitlines()
  i = 0
  while i < len(lines):
    stripped = lines[i].strip()
    if stripped.startswith("```"):
      fence, language, start = stripped[:len(stripped) - len(stripped.lstrip("`"))], stripped.lstrip("`").strip(), i
      i += 1
      body = []
      while i < len(lines) and not lines[i].strip().startswith(fence):
        body.append(lines[i])
        i += 1
      blocks.append(Block(doc, start + 2, language.lower(), tuple(body)))
    elif lines[i].startswith("    ") and stripped and (i == 0 or not lines[i - 1].strip()):
      start, body = i, []
      while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
        body.append(lines[i][4:])
        i += 1
      blocks.append(Block(doc, start + 1, "", tuple(body)))
      continue
    i += 1
  return blocks


def shell_commands(block: Block) -> list[Command]:
  commands, pending, pending_line = [], "", 0
  for offset, raw in enumerate(block.lines):
    if not pending:
      pending_line = block.line + offset
    if raw.rstrip().endswith("\\"):
      pending += raw.rstrip()[:-1] + " "
      continue
    text, pending = (pending + raw).strip(), ""
    if text.startswith("$ "):
      text = text[2:]
    try:
      tokens = shlex.split(text, comments=True)
    except ValueError as e:  # an unclosed quote: reported as a command that cannot parse
      commands.append(Command(block.doc, pending_line, text, None, None, (f"unreadable: {e}",)))
      continue
    segment: list[str] = []
    for token in [*tokens, "&&"]:
      if token != "&&":
        segment.append(token)
        continue
      command = _command(block.doc, pending_line, text, segment)
      if command is not None:
        commands.append(command)
      segment = []
  return commands


def _command(doc: str, line: int, text: str, tokens: list[str]) -> Command | None:
  while tokens and ENV_ASSIGNMENT.match(tokens[0]):
    tokens = tokens[1:]
  if not tokens:
    return None
  program, rest = tokens[0], tuple(tokens[1:])
  if program in CONSOLE_SCRIPTS:
    return Command(doc, line, text, CONSOLE_SCRIPTS[program], None, rest)
  if program not in PYTHONS or not rest:
    return None
  if rest[0] == "-m" and len(rest) > 1:
    return None if rest[1] in NOT_CHECKED else Command(doc, line, text, rest[1], None, rest[2:])
  if rest[0].endswith(".py"):
    return Command(doc, line, text, None, rest[0], rest[1:])
  return None


BLOCKS = [block for path in DOCS for block in code_blocks(path)]
COMMANDS = [c for b in BLOCKS if b.language in SHELL_LANGUAGES for c in shell_commands(b)]
SNIPPETS = [b for b in BLOCKS if b.language in PYTHON_LANGUAGES]


class _Parsed(BaseException):
  """Raised by the patched parser right after the outermost parse succeeded (BaseException: a program's
  `except Exception` must not swallow it)."""


def _stop_after_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
  """`parse_args` and `parse_known_args` call the real method, then raise _Parsed when the outermost call
  (not a subcommand's parser, not parse_args' own call of parse_known_args) returns."""
  depth = 0

  def wrap(real):
    def parse(self, *args, **kwargs):
      nonlocal depth
      depth += 1
      try:
        result = real(self, *args, **kwargs)
      finally:
        depth -= 1
      if depth == 0:
        raise _Parsed(result)
      return result
    return parse

  for name in ("parse_args", "parse_known_args"):
    monkeypatch.setattr(argparse.ArgumentParser, name, wrap(getattr(argparse.ArgumentParser, name)))


def test_every_doc_has_commands_to_check():
  assert COMMANDS, "no commands found in README.md and docs/*.md"
  assert {c.module for c in COMMANDS} >= {"sample", "convert", "train"}


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.where} {c.module or c.script or '?'}" for c in COMMANDS])
def test_command_parses(command: Command, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
  where = f"{command.where}: {command.text}"
  if command.module is None and command.script is None:
    pytest.fail(f"{where}\n{command.args[0]}", pytrace=False)
  if "..." in command.args:
    pytest.fail(f"{where}\na placeholder `...` in a command: write it whole, or in prose", pytrace=False)
  monkeypatch.setattr(sys, "path", list(sys.path))  # scripts may add to it at import
  monkeypatch.syspath_prepend(str(ROOT))  # `python -m sample` from a checkout runs the checkout's programs
  environ = dict(os.environ)  # and set XLA_FLAGS and such
  try:
    if command.script is not None:
      path = ROOT / command.script
      assert path.is_file(), f"{where}\nno such script"
      if "ArgumentParser" not in path.read_text():
        assert not command.args, f"{where}\n{command.script} takes no options"
        return
      monkeypatch.syspath_prepend(str(path.parent))  # as `python SCRIPT` puts its folder first
      monkeypatch.setattr(sys, "argv", [str(path), *command.args])
      run = lambda: runpy.run_path(str(path), run_name="__main__")
    else:
      monkeypatch.setattr(sys, "argv", [command.module, *command.args])
      # As `python -m`: the module runs fresh, not as an earlier command left it imported.
      for name in (command.module, f"{command.module}.__main__"):
        monkeypatch.delitem(sys.modules, name, raising=False)
      run = lambda: runpy.run_module(command.module, run_name="__main__", alter_sys=True)
    _stop_after_parsing(monkeypatch)
    try:
      run()
    except _Parsed:
      return
    except SystemExit as e:
      if e.code in (0, None) and {"-h", "--help"} & set(command.args):
        return
      refused = e.code
    else:
      pytest.fail(f"{where}\nthe program finished without parsing a command line", pytrace=False)
    pytest.fail(f"{where}\nthe parser refused it (exit {refused}):\n{capsys.readouterr().err}", pytrace=False)
  finally:
    os.environ.clear()
    os.environ.update(environ)


@pytest.mark.parametrize("block", SNIPPETS, ids=[f"{b.doc}:{b.line}" for b in SNIPPETS])
def test_python_snippet_compiles_and_its_kvjax_names_exist(block: Block):
  source = "\n".join(block.lines)
  tree = compile(source, f"{block.doc}:{block.line}", "exec", ast.PyCF_ONLY_AST)
  compile(tree, f"{block.doc}:{block.line}", "exec")
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "kvjax":
      module = importlib.import_module(node.module)
      for alias in node.names:
        assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
            f"{block.doc}:{block.line + node.lineno}: {node.module} has no {alias.name}")
    elif isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split(".")[0] == "kvjax":
          importlib.import_module(alias.name)


LINKS = [(path, target) for path in DOCS for target in dict.fromkeys(LINK.findall(path.read_text()))
         if not re.match(r"[a-z]+:", target) and not target.startswith("#")]


@pytest.mark.parametrize("path, target", LINKS, ids=[f"{p.relative_to(ROOT)}->{t}" for p, t in LINKS])
def test_relative_link_leads_to_a_file(path: pathlib.Path, target: str):
  assert (path.parent / target.split("#")[0]).exists(), f"{path.relative_to(ROOT)}: broken link {target}"


def test_the_readme_holds_the_command_ci_runs():
  ci = ROOT / ".ci" / "run"
  if not ci.exists():
    pytest.skip("no .ci/run")
  command = [line for line in ci.read_text().splitlines() if line.startswith("python3 -m venv")]
  assert command and command[-1] in (ROOT / "README.md").read_text().splitlines()
