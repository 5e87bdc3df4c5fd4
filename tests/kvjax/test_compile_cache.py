"""The persistent compilation cache lives in a private directory: created 0700, refused when others can write."""

import os
import stat

import pytest

from kvjax import compile_cache


def test_a_new_cache_directory_is_private(tmp_path, monkeypatch):
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "cache"))
  path = compile_cache.default_directory()
  os.makedirs(path, mode=0o700)
  compile_cache.check_private(path)
  assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0


def test_a_directory_others_can_write_is_refused(tmp_path):
  shared = tmp_path / "shared"
  shared.mkdir()
  os.chmod(shared, 0o777)
  with pytest.raises(ValueError, match="others can write to it"):
    compile_cache.check_private(str(shared))
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="not a directory"):
    compile_cache.check_private(str(tmp_path / "file"))


def test_a_cache_given_to_jax_is_checked_too(tmp_path):
  import jax
  shared = tmp_path / "shared"
  shared.mkdir()
  os.chmod(shared, 0o777)
  before = jax.config.jax_compilation_cache_dir
  jax.config.update("jax_compilation_cache_dir", str(shared))  # as JAX_COMPILATION_CACHE_DIR would
  try:
    with pytest.raises(ValueError, match="others can write to it"):
      compile_cache.enable()
    os.chmod(shared, 0o700)
    assert compile_cache.enable() == str(shared)
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
