import os

import numpy as np

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
KEYFRAME_FIXTURE = os.path.join(FIXTURES, "keyframe_unet")


def write_raw(tmp_path, name: str, array: np.ndarray):
  """A LazyTensor backed by a raw file holding `array`."""
  from kvjax.checkpoints import LazyTensor
  path = tmp_path / f"{name}.raw"
  array = np.ascontiguousarray(array)
  array.tofile(path)
  strides = tuple(s // array.itemsize for s in array.strides)
  return LazyTensor(str(path), 0, array.dtype, array.shape, strides, array.size, name)
