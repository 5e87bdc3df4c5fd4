import shutil

import pytest

from testing_utils import KEYFRAME_FIXTURE


@pytest.fixture
def keyframe_fixture(tmp_path):
  """A writable copy of the keyframe fixture folder."""
  dst = tmp_path / "keyframe_unet"
  shutil.copytree(KEYFRAME_FIXTURE, dst)
  return dst
