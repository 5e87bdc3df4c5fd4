import os

# Eight simulated CPU devices for the sharding tests; set before anything imports jax.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import shutil

import pytest

from testing_utils import KEYFRAME_FIXTURE


@pytest.fixture
def keyframe_fixture(tmp_path):
  """A writable copy of the keyframe fixture folder."""
  dst = tmp_path / "keyframe_unet"
  shutil.copytree(KEYFRAME_FIXTURE, dst)
  return dst
