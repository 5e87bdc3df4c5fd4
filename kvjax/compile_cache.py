"""A persistent compilation cache for the programs (`python -m sample` turns it on by default): the second
run of the same shapes loads its executables instead of compiling them.

The cache is per user (`$XDG_CACHE_HOME/kvjax/jax` or `~/.cache/kvjax/jax`, or `KVJAX_COMPILE_CACHE`). A
cached executable is code that the next run executes, so a directory that someone else can write to is
refused (it must belong to the user and not be group- or world-writable).
"""

from __future__ import annotations

import os
import stat

ENV = "KVJAX_COMPILE_CACHE"


def default_directory() -> str:
  if os.environ.get(ENV):
    return os.environ[ENV]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "kvjax", "jax")


def check_private(path: str) -> None:
  """Raises ValueError unless `path` is a directory of this user that nobody else can write to."""
  info = os.stat(path)
  if not stat.S_ISDIR(info.st_mode):
    raise ValueError(f"compile cache {path}: not a directory")
  if hasattr(os, "getuid") and info.st_uid != os.getuid():
    raise ValueError(f"compile cache {path}: belongs to another user (its executables would run as you)")
  if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
    raise ValueError(f"compile cache {path}: others can write to it (its executables would run as you); "
                     "chmod go-w it or pass another directory")


def enable(path: str | None = None) -> str:
  """Creates (mode 0700) and checks the cache directory, then points JAX at it; returns the path. A cache
  JAX was already given (JAX_COMPILATION_CACHE_DIR) is kept with JAX's settings, and checked as ours."""
  import jax
  if path is None and jax.config.jax_compilation_cache_dir:
    given = jax.config.jax_compilation_cache_dir
    if os.path.exists(given):  # (else JAX creates it, under the user's umask)
      check_private(given)
    return given
  path = os.path.abspath(path or default_directory())
  os.makedirs(path, mode=0o700, exist_ok=True)
  check_private(path)
  jax.config.update("jax_compilation_cache_dir", path)
  # Cache every program that took a while to compile; tiny ones are cheaper to rebuild than to read.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  return path
