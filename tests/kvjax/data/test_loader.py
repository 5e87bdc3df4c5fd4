"""The grain loader over the prepared dataset: shapes, windows, sharding, and exact resume."""

import numpy as np
import pytest

from kvjax.data.loader import make_clip_loader, resize_and_crop, window_indices


def loader(prepared, **overrides):
  summary, out = prepared
  options = dict(batch_size=2, num_frames=4, frame_stride=2, resolution=(32, 48), seed=7, shard_index=0,
                 shard_count=1)
  return make_clip_loader(str(out), **{**options, **overrides})


def test_batches(prepared):
  batch = next(iter(loader(prepared)))
  assert batch["frames"].dtype == np.uint8 and batch["frames"].shape == (2, 4, 32, 48, 3)
  assert batch["motion_score"].dtype == np.float32 and batch["motion_score"].shape == (2,)
  assert batch["caption"].shape == (2,) and all(isinstance(c, str) for c in batch["caption"].tolist())
  assert batch["fps"].tolist() == [12.0, 12.0]  # 24 fps, every second frame
  assert set(batch) >= {"source_caption", "clip_id", "source", "start_seconds"}


def test_same_seed_same_batches_and_exact_resume(prepared):
  iterator = iter(loader(prepared))
  for _ in range(3):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(6)]  # crosses the 9-clip epoch boundary
  resumed = iter(loader(prepared))
  resumed.set_state(state)
  for want, got in zip(expected, [next(resumed) for _ in range(6)]):
    assert want["clip_id"].tolist() == got["clip_id"].tolist()
    np.testing.assert_array_equal(want["frames"], got["frames"])
  order = lambda seed: [batch["clip_id"].tolist() for batch, _ in zip(loader(prepared, seed=seed), range(4))]
  assert order(7) == order(7) != order(8)


def test_hosts_read_disjoint_shards(prepared):
  seen = []
  for host in range(2):
    batches = list(loader(prepared, shard_index=host, shard_count=2, num_epochs=1, batch_size=1))
    seen.append({clip for batch in batches for clip in batch["clip_id"].tolist()})
  assert len(seen[0]) == len(seen[1]) == 4 and not seen[0] & seen[1]


def test_the_global_batches_do_not_depend_on_the_host_count(prepared):
  one = [batch for batch, _ in zip(loader(prepared, batch_size=4), range(3))]  # crosses the epoch boundary
  hosts = [[batch for batch, _ in zip(loader(prepared, batch_size=2, shard_index=k, shard_count=2), range(3))]
           for k in range(2)]
  for step, whole in enumerate(one):
    assert whole["clip_id"].tolist() == hosts[0][step]["clip_id"].tolist() + hosts[1][step]["clip_id"].tolist()
    np.testing.assert_array_equal(whole["frames"], np.concatenate([hosts[0][step]["frames"], hosts[1][step]["frames"]]))


def test_a_loader_starts_at_any_global_batch_on_any_number_of_hosts(prepared):
  """A checkpoint's data position is the global batches read: a run of 2 hosts resumes a 1-host run."""
  one = [batch for batch, _ in zip(loader(prepared, batch_size=4), range(4))]  # crosses the epoch boundary
  hosts = [[batch for batch, _ in zip(loader(prepared, batch_size=2, shard_index=k, shard_count=2, start_batch=2),
                                      range(2))] for k in range(2)]
  for step, whole in enumerate(one[2:]):
    assert whole["clip_id"].tolist() == hosts[0][step]["clip_id"].tolist() + hosts[1][step]["clip_id"].tolist()
    np.testing.assert_array_equal(whole["frames"], np.concatenate([hosts[0][step]["frames"], hosts[1][step]["frames"]]))
  with pytest.raises(ValueError, match="start batch 3 is not within the 2 global batches"):
    loader(prepared, batch_size=4, num_epochs=1, start_batch=3)


def test_window_and_crop():
  rng = np.random.default_rng(0)
  for _ in range(20):
    indices = window_indices(30, 5, 3, rng)
    assert indices[0] <= 30 - 13 and np.all(np.diff(indices) == 3)
  assert window_indices(5, 4, 2, rng).tolist() == [0, 2, 4, 4]  # short clip: the last frame repeats
  assert window_indices(30, 5, 3, rng, start="first").tolist() == [0, 3, 6, 9, 12]
  frame = np.zeros((120, 160, 3), np.uint8)
  frame[:, 20:140] = 255  # the centre 120x120 is white
  assert np.all(resize_and_crop(frame, (60, 60)) == 255)
  assert resize_and_crop(frame, (90, 200)).shape == (90, 200, 3)


def test_too_few_clips_for_a_batch(prepared):
  with pytest.raises(ValueError, match="cannot fill a batch"):
    loader(prepared, batch_size=5, shard_count=2)


def test_first_frame_windows_start_every_clip_at_its_start(prepared):
  first, anywhere = iter(loader(prepared, window_start="first")), iter(loader(prepared))
  later = []
  for _ in range(3):
    a, b = next(first), next(anywhere)
    assert a["clip_id"].tolist() == b["clip_id"].tolist()  # the same clips in the same order, other frames
    later += (b["start_seconds"] - a["start_seconds"]).tolist()
  assert min(later) >= 0 and max(later) > 0
  with pytest.raises(ValueError, match="window_start must be one of random, first, got 'last'"):
    loader(prepared, window_start="last")
