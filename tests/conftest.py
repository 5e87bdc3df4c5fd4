import os

# Eight simulated CPU devices for the sharding tests; set before anything imports jax.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

# XLA without most of its optimisations (LLVM at -O0): the tests run tiny models for a few steps, so compiling
# is most of their time, and this compiles about a sixth faster. The demo's tests, which run the shipped model
# for its full steps, turn it back on (tests/sample/test_demo.py).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import shutil
import tempfile

# One persistent compilation cache for the whole run, shared by both workers (they inherit this process's
# environment) and by every program a test starts: many files compile the same programs (the fixtures' models,
# the tiny pipeline's stages), and a program compiled once is then read back instead of compiled again. A
# fresh private directory each run (tempfile makes it 0700, as kvjax.compile_cache requires), removed at the
# end by the process that made it.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="kvjax-tests-jax-cache-")
  os.environ["KVJAX_TESTS_OWN_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest

from testing_utils import KEYFRAME_FIXTURE

# The longest files (minutes each on 2 cores), longest first. Starting the long ones first packs the two
# workers evenly (longest-first scheduling); the rest keep their order. xdist's --dist loadfile hands files
# out in collection order only without its own reordering (below).
LONGEST_FILES = ("train/test_multihost.py", "train/test_train_cli.py", "sample/test_demo.py",
                 "kvjax/test_movq_training.py", "kvjax/test_keyframe_unet.py", "kvjax/test_training.py",
                 "train/test_train_movq_cli.py", "train/test_prepare_data.py")


def pytest_configure(config):
  # xdist (3.x) otherwise reorders files by their number of tests, most first: the longest files, which have
  # one or two tests each (test_multihost.py, test_train_movq_cli.py), went last and ran on after the other
  # worker had finished.
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False


def pytest_unconfigure(config):
  own = os.environ.get("KVJAX_TESTS_OWN_CACHE")
  if own and not os.environ.get("PYTEST_XDIST_WORKER") and own == os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    shutil.rmtree(own, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  position = lambda item: rank.get(os.path.relpath(str(item.path), tests_dir).replace(os.sep, "/"), len(rank))
  items.sort(key=position)  # stable: a file's tests keep their order


@pytest.fixture
def keyframe_fixture(tmp_path):
  """A writable copy of the keyframe fixture folder."""
  dst = tmp_path / "keyframe_unet"
  shutil.copytree(KEYFRAME_FIXTURE, dst)
  return dst
