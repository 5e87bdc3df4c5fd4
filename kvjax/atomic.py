"""Outputs that appear whole or not at all: build in a hidden staging path, then rename into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from typing import Iterator


def check_free(path: str, overwrite: bool) -> str:
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
  return path


@contextlib.contextmanager
def staged(path: str | os.PathLike, *, overwrite: bool = False, folder: bool = True) -> Iterator[str]:
  """Yields a staging path beside `path` (a created folder, or a free file name); when the block ends
  without an error it replaces `path`, otherwise it is removed and `path` is left untouched."""
  path = check_free(path, overwrite)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  staging = os.path.join(parent, f".{os.path.basename(path)}.partial-{uuid.uuid4().hex[:8]}")
  try:
    if folder:
      os.mkdir(staging)
    yield staging
    if os.path.isdir(path):
      shutil.rmtree(path)
    elif os.path.exists(path):
      os.remove(path)
    os.rename(staging, path)
  except BaseException:
    if os.path.isdir(staging):
      shutil.rmtree(staging, ignore_errors=True)
    elif os.path.exists(staging):
      os.remove(staging)
    raise
