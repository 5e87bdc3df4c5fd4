"""Training batches from the prepared dataset with grain: random access into the ArrayRecord files, a
seeded shuffle, each host its rows of the global batches, and an iterator whose state can be saved and restored for exact resume.

Each element is one clip: a window of `num_frames` frames, `frame_stride` apart, at a random start fixed by
(seed, its position in the global order); only the window's frames are decoded. The global batches are the
same whatever the number of hosts, each host reading only its rows (`HostRows`).
Frames are resized (short side) and centre-cropped to `resolution`. A clip shorter than the window repeats
its last frame.

  loader = make_clip_loader(dataset_dir, batch_size=8, num_frames=16, resolution=(256, 256), seed=0)
  iterator = iter(loader)
  batch = next(iterator)   # {"frames": uint8 (B, T, H, W, 3), "caption": str (B,), "motion_score": float32 (B,), ...}
  state = iterator.get_state()        # bytes: store beside the model checkpoint
  iterator = iter(loader); iterator.set_state(state)   # continues with exactly the batches that followed
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from kvjax.data.dataset import SPLIT, WINDOW_STARTS, decode_jpeg, parse_example, shard_paths


def resize_and_crop(frame: np.ndarray, resolution: tuple[int, int]) -> np.ndarray:
  """Scales `frame` so it covers (height, width) = resolution, then cuts out the centre."""
  import cv2
  target_h, target_w = resolution
  height, width = frame.shape[:2]
  scale = max(target_h / height, target_w / width)
  size = (max(target_w, round(width * scale)), max(target_h, round(height * scale)))
  if size != (width, height):
    frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
  top, left = (size[1] - target_h) // 2, (size[0] - target_w) // 2
  return np.ascontiguousarray(frame[top:top + target_h, left:left + target_w])


def window_indices(clip_frames: int, num_frames: int, frame_stride: int, rng: np.random.Generator,
                   start: str = "random") -> np.ndarray:
  """`num_frames` frame indices `frame_stride` apart, from a random start ("random") or the clip's first
  frame ("first"); a short clip repeats its last frame."""
  span = (num_frames - 1) * frame_stride + 1
  start = int(rng.integers(0, max(1, clip_frames - span + 1))) if start == "random" else 0
  return np.minimum(start + frame_stride * np.arange(num_frames), clip_frames - 1)


@dataclasses.dataclass(frozen=True)
class ClipWindow(grain.transforms.Map):
  """{"record": serialized example, "position": global position} -> {"frames": uint8 (T, H, W, 3), the clip's
  text and numbers}; the window's start is drawn from (seed, global position), or is the clip's first frame
  (`start="first"`)."""
  num_frames: int
  frame_stride: int
  resolution: tuple[int, int]
  seed: int
  start: str = "random"

  def map(self, row: dict) -> dict:
    example = parse_example(row["record"])
    jpeg_frames = example.pop("video")
    rng = np.random.default_rng([self.seed, row["position"], 2])
    indices = window_indices(len(jpeg_frames), self.num_frames, self.frame_stride, rng, self.start)
    frames = np.stack([resize_and_crop(decode_jpeg(jpeg_frames[i]), self.resolution) for i in indices])
    fps = float(example["fps"])
    return {
        "frames": frames,
        "caption": example["caption"], "source_caption": example["source_caption"],
        "clip_id": example["clip_id"], "source": example["source"],
        "motion_score": np.float32(example["motion_score"]), "fps": np.float32(fps / self.frame_stride),
        "start_seconds": np.float32(example["start_seconds"] + indices[0] / fps),
    }


ENDLESS_EPOCHS = 1 << 24  # num_epochs=None: more epochs than any run reads


class HostRows:
  """This host's rows of every global batch over `source`, the same global batches whatever the number
  of hosts: row j of a host is global position g = (j // b) * G + rows[j % b] (b rows a host, G = b x hosts;
  `rows` default to the block of shard_index: [k * b, (k + 1) * b)),
  and position g is record order_e[g % E] of epoch e = g // E, where E is the records cut to whole global
  batches and order_e a shuffle seeded by (seed, e) (the identity without shuffle). A host reads only its
  own rows. Items are {"record": the source's item, "position": g}. With `start_batch` n the rows begin at
  global batch n: a run resumed at n, on any number of hosts, reads what the uninterrupted run read."""

  def __init__(self, source, *, batch_size: int, shard_index: int, shard_count: int, seed: int, shuffle: bool,
               num_epochs: int | None, rows=None, start_batch: int = 0):
    self.source, self.batch_size, self.shard_count = source, batch_size, shard_count
    # This host's rows of each global batch (`kvjax.sharding.host_batch_rows`); default: block shard_index.
    self.rows = tuple(range(shard_index * batch_size, (shard_index + 1) * batch_size) if rows is None else rows)
    if len(self.rows) != batch_size or not all(0 <= r < batch_size * shard_count for r in self.rows):
      raise ValueError(f"rows {self.rows} are not {batch_size} rows of a global batch of {batch_size * shard_count}")
    self.seed, self.shuffle = seed, shuffle
    self.epochs = ENDLESS_EPOCHS if num_epochs is None else num_epochs
    self.records = len(source)
    self.per_epoch = self.records - self.records % (batch_size * shard_count)
    batches = self.epochs * self.per_epoch // (batch_size * shard_count)
    if not 0 <= start_batch <= batches:
      raise ValueError(f"start batch {start_batch} is not within the {batches} global batches")
    self.start_batch = start_batch
    self._order = (None, None)  # (epoch, its record order): consecutive rows share an epoch

  def __len__(self) -> int:
    return (self.epochs * self.per_epoch // self.shard_count) - self.start_batch * self.batch_size

  def _record(self, position: int) -> int:
    epoch, index = divmod(position, self.per_epoch)
    if not self.shuffle:
      return index
    if self._order[0] != epoch:
      self._order = (epoch, np.random.default_rng([self.seed, epoch, 1]).permutation(self.records))
    return int(self._order[1][index])

  def __repr__(self) -> str:  # grain checks a restored iterator state against it
    return (f"HostRows({self.source!r}, rows={self.rows} of {self.batch_size * self.shard_count}, "
            f"seed={self.seed}, shuffle={self.shuffle}, epochs={self.epochs}, start_batch={self.start_batch})")

  def __getitem__(self, row: int) -> dict:
    batch, offset = divmod(int(row), self.batch_size)
    position = (self.start_batch + batch) * self.batch_size * self.shard_count + self.rows[offset]
    return {"record": self.source[self._record(position)], "position": position}


def make_clip_loader(dataset_dir: str, *, batch_size: int, num_frames: int, resolution: tuple[int, int],
                     seed: int, split: str = SPLIT, frame_stride: int = 1, shuffle: bool = True,
                     num_epochs: int | None = None, shard_index: int | None = None, shard_count: int | None = None,
                     worker_count: int = 0, rows=None, start_batch: int = 0, window_start: str = "random"):
  """A grain DataLoader over the dataset at dataset_dir (the prepare output folder, its dataset folder, or
  the tfds version folder). Iterating it yields batches as described in the module docstring; each host
  reads its own shard (by default jax.process_index() of jax.process_count()), whole batches only.
  num_epochs=None repeats forever. `fps` in a batch is the rate of the sampled window. The order of batches
  depends on worker_count: restore a saved state into a loader made with the same arguments, or start a
  loader at global batch `start_batch` (any number of hosts). `window_start`: each clip's window starts at
  a random frame ("random") or at the clip's first frame ("first")."""
  if shard_index is None or shard_count is None:
    import jax
    shard_index, shard_count = jax.process_index(), jax.process_count()
  if num_frames < 1 or frame_stride < 1 or batch_size < 1:
    raise ValueError(f"batch_size ({batch_size}), num_frames ({num_frames}) and frame_stride ({frame_stride}) "
                     "must be at least 1")
  if window_start not in WINDOW_STARTS:
    raise ValueError(f"window_start must be one of {', '.join(WINDOW_STARTS)}, got {window_start!r}")
  source = grain.sources.ArrayRecordDataSource(shard_paths(dataset_dir, split))
  window = ClipWindow(num_frames, frame_stride, tuple(resolution), seed, window_start)
  return sharded_batches(source, window, f"{dataset_dir}: {len(source)} clips", batch_size=batch_size, seed=seed,
                         shuffle=shuffle, num_epochs=num_epochs, shard_index=shard_index, shard_count=shard_count,
                         worker_count=worker_count, rows=rows, start_batch=start_batch)


def sharded_batches(source, transform, what: str, *, batch_size: int, seed: int, shuffle: bool,
                    num_epochs: int | None, shard_index: int, shard_count: int, worker_count: int, rows=None,
                    start_batch: int = 0):
  """A grain DataLoader of whole batches of `transform`ed rows of `HostRows` (this host's rows of the same
  global batches whatever the number of hosts); `what` names the records in the error when they cannot fill
  a batch on every host."""
  if worker_count > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():
      # grain's worker processes read absl flags; a program that does not use absl never parses them.
      flags.FLAGS.mark_as_parsed()
  if len(source) < shard_count * batch_size:
    raise ValueError(f"{what} cannot fill a batch of {batch_size} on each of {shard_count} hosts")
  host_rows = HostRows(source, batch_size=batch_size, shard_index=shard_index, shard_count=shard_count, seed=seed,
                       shuffle=shuffle, num_epochs=num_epochs, rows=rows, start_batch=start_batch)
  sampler = grain.samplers.IndexSampler(len(host_rows), shard_options=grain.sharding.NoSharding(), shuffle=False,
                                        num_epochs=1, seed=seed)
  return grain.DataLoader(data_source=host_rows, sampler=sampler, worker_count=worker_count,
                          operations=[transform, grain.transforms.Batch(batch_size, drop_remainder=True)])
