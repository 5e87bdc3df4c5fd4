"""The command-line programs as installed: `kvjax.cli.train`, `kvjax.cli.sample` and `kvjax.cli.convert` are the
repository's top-level `train/`, `sample/` and `convert/` folders, which pyproject.toml maps here so that an installed
wheel has only `kvjax` at its top level. From a checkout they run as `python -m train`, `python -m sample`,
`python -m convert` (and `python -m train.demo`, ...); installed, as `python -m kvjax.cli.train` (...) or the console
scripts `kvjax-train`, `kvjax-sample` and `kvjax-convert`. This folder holds no programs of its own."""

from __future__ import annotations


def program_module(program: str, package: str | None) -> str:
  """The module that `python -m` runs for a program named as from a checkout ("train", "train.export", "sample"),
  resolved the way the calling program was imported: `kvjax.cli.<program>` when the caller's `__package__` lies under
  kvjax.cli (installed), else the checkout's own top-level name. For programs that start other programs."""
  return f"{__name__}.{program}" if (package or "").startswith(__name__ + ".") else program


def program_name(program: str, package: str | None) -> str:
  """How a program's usage line names it: the console script that started it (`kvjax-train`), else
  `python -m <program_module(program, package)>`."""
  import os
  import sys
  script = os.path.basename(sys.argv[0]) if sys.argv else ""
  if script.startswith("kvjax-") and "." not in program:
    return script
  return f"python -m {program_module(program, package)}"
