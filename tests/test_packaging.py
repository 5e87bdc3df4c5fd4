"""The wheel: only `kvjax` at its top level (the programs of the repository's train/, sample/ and convert/ folders
installed as kvjax.cli.train, kvjax.cli.sample and kvjax.cli.convert), the demo weights and the app's page, four console
scripts (kvjax-app among them); the console scripts of the running interpreter's install run."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kvjax.cli import program_module

REPO = Path(__file__).resolve().parents[1]
PROGRAMS = ("convert", "sample", "train")  # repository folder -> kvjax/cli/<folder> in the wheel
SCRIPTS = {**{f"kvjax-{name}": f"kvjax.cli.{name}.__main__:main" for name in PROGRAMS},
           "kvjax-app": "kvjax.cli.sample.app:main"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
  # Built from a copy of the sources: a build in the checkout would leave build/ and kvjax.egg-info there.
  src = tmp_path_factory.mktemp("src")
  for path in REPO.iterdir():
    if path.is_file():
      shutil.copy2(path, src / path.name)
  for folder in ("kvjax", *PROGRAMS):
    shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
  out = tmp_path_factory.mktemp("wheel")
  built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                          "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
  assert built.returncode == 0, built.stdout + built.stderr
  (path,) = out.glob("kvjax-*.whl")
  with zipfile.ZipFile(path) as archive:
    yield archive


def _sources(folder: Path) -> list[Path]:
  return [p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def test_wheel_has_only_kvjax_at_the_top(wheel):
  names = wheel.namelist()
  top = {name.split("/")[0] for name in names}
  assert {t for t in top if not t.endswith(".dist-info")} == {"kvjax"}, sorted(top)
  dist_info = next(t for t in top if t.endswith(".dist-info"))
  assert wheel.read(f"{dist_info}/top_level.txt").decode().split() == ["kvjax"]


def test_wheel_holds_every_module_and_the_demo_weights(wheel):
  names = set(wheel.namelist())
  # Every module of the library and of the programs (the package list in pyproject.toml is written by hand).
  expected = {f"kvjax/{p.as_posix()}" for p in _sources(REPO / "kvjax") if p.suffix == ".py" or p.parts[:2] ==
              ("demo", "weights") or p.parts == ("app", "page.html")}
  for program in PROGRAMS:
    expected |= {f"kvjax/cli/{program}/{p.as_posix()}" for p in _sources(REPO / program) if p.suffix == ".py"}
  assert not expected - names, sorted(expected - names)
  assert {"kvjax/cli/train/__main__.py", "kvjax/cli/train/demo.py", "kvjax/cli/sample/__main__.py",
          "kvjax/cli/convert/__main__.py", "kvjax/demo/weights/sampling.json", "kvjax/cli/sample/app.py",
          "kvjax/app/page.html"} <= names
  # The programs install as code only (no run outputs or weights beside them).
  assert not [n for n in names if n.startswith("kvjax/cli/") and not n.endswith(".py")]


def test_wheel_entry_points_are_the_four_console_scripts(wheel):
  dist_info = next(n.split("/")[0] for n in wheel.namelist() if n.split("/")[0].endswith(".dist-info"))
  points = configparser.ConfigParser(delimiters=("=",))
  points.optionxform = str
  points.read_string(wheel.read(f"{dist_info}/entry_points.txt").decode())
  assert points.sections() == ["console_scripts"]
  assert dict(points["console_scripts"]) == SCRIPTS


def test_console_scripts_run_help(tmp_path):
  scripts = [Path(sys.executable).parent / name for name in SCRIPTS]
  if not all(script.exists() for script in scripts):
    pytest.skip("the console scripts are not installed beside this interpreter (pip install -e . makes them)")
  # From another folder, so that nothing resolves through the checkout; they import jax at once.
  running = [subprocess.Popen([str(script), "--help"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for script in scripts]
  for script, process in zip(scripts, running):
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0 and stdout.startswith(f"usage: {script.name} "), f"{script.name}: {stderr[-2000:]}"


def test_program_module_follows_how_the_caller_was_imported():
  assert program_module("train.export", "train") == "train.export"  # from a checkout: python -m train.demo
  assert program_module("sample", "kvjax.cli.train") == "kvjax.cli.sample"  # installed: python -m kvjax.cli.train.demo
  assert program_module("train", None) == "train"  # a script run by its path


def test_programs_import_their_siblings_relatively():
  # Installed, the programs are kvjax.cli.train etc.: an absolute `train.…` import inside them fails there.
  import ast
  absolute = []
  for program in PROGRAMS:
    for path in (REPO / program).rglob("*.py"):
      for node in ast.walk(ast.parse(path.read_text())):
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                   [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])
        absolute += [f"{path.relative_to(REPO)}: {m}" for m in modules if m and m.split(".")[0] in PROGRAMS]
  assert not absolute, absolute
