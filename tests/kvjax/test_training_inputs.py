"""The global batch of a step is the same examples however many hosts read it (each host its own rows):
generated clips and the interpolation objective's per-clip draws are seeded per global row."""

import numpy as np

from kvjax.data.shapes import ShapeClips
from kvjax.training.train_config import TRAIN_PRESETS
from kvjax.training.inputs import SyntheticClips, select_interpolation_frames


def _global(make, shards: int, batch: int, steps: int = 2):
  readers = [make(batch // shards, k, shards) for k in range(shards)]
  return [{key: np.concatenate([next_batch[key] for next_batch in batches]) for key in batches[0]}
          for batches in zip(*[[next(r) for _ in range(steps)] for r in readers])]


def test_a_hosts_rows_are_those_its_devices_hold():
  from kvjax.sharding import batch_sharding, host_batch_rows, make_mesh
  assert host_batch_rows(batch_sharding(make_mesh("data=2,fsdp=2,tensor=2")), 8) == tuple(range(8))  # one host


def test_generated_clips_do_not_depend_on_the_host_count():
  makers = {"synthetic": lambda b, k, n: SyntheticClips(b, 2, (8, 8), 3, shard_index=k),
            "shapes": lambda b, k, n: ShapeClips(b, 2, (16, 16), 3, shard_index=k, shard_count=n)}
  for name, make in makers.items():
    one, two = _global(make, 1, 4), _global(make, 2, 4)
    for a, b in zip(one, two):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {key}")
    assert not np.array_equal(one[0]["frames"], one[1]["frames"])  # batches differ from step to step


def test_interpolation_skips_do_not_depend_on_the_host_count():
  config = TRAIN_PRESETS["interpolation-tiny"]
  frames = np.arange(8 * config.clip_frames * 50).reshape(8, -1, 1)[:, : config.loader_frames]
  _, whole = select_interpolation_frames(frames, config, 5, range(8))
  # Hosts of a mesh split fsdp-major hold strided rows (kvjax.sharding.host_batch_rows).
  strided = [select_interpolation_frames(frames[k::2], config, 5, range(k, 8, 2))[1] for k in range(2)]
  np.testing.assert_array_equal(whole[0::2], strided[0])
  np.testing.assert_array_equal(whole[1::2], strided[1])


def test_interpolation_clips_take_frames_at_the_spacing_of_their_skip():
  import dataclasses
  import pytest
  from kvjax.training.interpolation_loss import InterpolationTrainingConfig
  config = TRAIN_PRESETS["interpolation-tiny"]
  frames = np.arange(8 * config.loader_frames).reshape(8, -1, 1)
  clips, skips = select_interpolation_frames(frames, config, 0, range(8))
  assert set(skips) == {3, 1} and config.loader_frames == (config.clip_frames - 1) * 4 + 1  # the reference's
  for clip, skip, source in zip(clips[..., 0], skips, frames[..., 0]):
    np.testing.assert_array_equal(clip, source[::skip + 1][:config.clip_frames])
  # A world whose base frames are consecutive-ish (the demo): its own spacing per skip, and a shorter read.
  spaced = dataclasses.replace(config, interpolation=InterpolationTrainingConfig(skip_frames=(3, 1), source_spacing=(1, 2)))
  assert spaced.loader_frames == (config.clip_frames - 1) * 2 + 1
  frames = frames[:, :spaced.loader_frames]
  clips, skips = select_interpolation_frames(frames, spaced, 0, range(8))
  for clip, skip, source in zip(clips[..., 0], skips, frames[..., 0]):
    np.testing.assert_array_equal(clip, source[::1 if skip == 3 else 2][:config.clip_frames])
  with pytest.raises(ValueError, match="source_spacing"):
    InterpolationTrainingConfig(skip_frames=(3, 1), source_spacing=(1,))
