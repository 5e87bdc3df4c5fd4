"""The clip store and the tfds dataset built from it.

Each finished clip is one file in the work folder (`<clip_id>.npz`: its JPEG frames and a JSON metadata
record), written atomically, so a crash never loses a finished clip nor leaves a half-written one. The tfds
dataset (ArrayRecord files, written without TensorFlow) is rebuilt from the store at the end of each run;
features:

  video           Sequence(Image(jpeg)): uint8 (T, H, W, 3), 24 fps
  caption         Text: the captions file's caption, else the source's own
  source_caption  Text: the source's own caption (sidecar .txt or container tag), may be empty
  clip_id, source Text: the clip's id and its source path relative to the source folder
  motion_score, fps, start_seconds, end_seconds   float32
  num_frames, height, width                       int32

Read it with kvjax.data.loader (grain, random access, exact resume) or
tfds.builder_from_directory(path).as_data_source("train").
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
from typing import Sequence

import numpy as np

from kvjax.atomic import staged

DATASET_NAME = "kvjax_clips"
DATASET_VERSION = "1.0.0"
SPLIT = "train"
WINDOW_STARTS = ("random", "first")  # where a training window starts in a clip (kvjax.data.loader)


@dataclasses.dataclass(frozen=True)
class ClipMeta:
  clip_id: str
  source: str  # relative to the source folder
  source_fingerprint: str  # the source's size and mtime when the clip was made
  start_seconds: float
  end_seconds: float
  fps: float
  num_frames: int
  width: int
  height: int
  crop: tuple[int, int, int, int]  # x, y, width, height in the source frame
  motion_score: float
  source_caption: str


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
  import cv2
  ok, data = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
  if not ok:
    raise RuntimeError(f"JPEG encoding failed for a frame of shape {frame.shape}")
  return data.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
  import cv2
  frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if frame is None:
    raise ValueError("cannot decode a JPEG frame")
  return frame[..., ::-1]


def save_clip(path: str, meta: ClipMeta, jpeg_frames: Sequence[bytes]) -> None:
  """Writes the clip file whole or not at all."""
  offsets = np.cumsum([0, *map(len, jpeg_frames)]).astype(np.int64)
  with staged(path, overwrite=True, folder=False) as staging, open(staging, "wb") as f:
    np.savez(f, frames=np.frombuffer(b"".join(jpeg_frames), np.uint8), offsets=offsets,
             meta=np.frombuffer(json.dumps(dataclasses.asdict(meta)).encode(), np.uint8))


def load_clip_meta(path: str) -> ClipMeta:
  with np.load(path) as archive:
    fields = json.loads(archive["meta"].tobytes())
  return ClipMeta(**{**fields, "crop": tuple(fields["crop"])})


def load_clip_frames(path: str) -> list[bytes]:
  with np.load(path) as archive:
    data, offsets = archive["frames"].tobytes(), archive["offsets"]
  return [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def _features():
  import tensorflow_datasets as tfds
  text = tfds.features.Text()
  return tfds.features.FeaturesDict({
      "video": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")),
      "caption": text, "source_caption": text, "clip_id": text, "source": text,
      "motion_score": np.float32, "fps": np.float32, "start_seconds": np.float32, "end_seconds": np.float32,
      "num_frames": np.int32, "height": np.int32, "width": np.int32,
  })


def _builder_class():
  import tensorflow_datasets as tfds

  class KvjaxClips(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Video clips prepared by kvjax.data.prepare (see the module docstring)."""
    name = DATASET_NAME
    VERSION = tfds.core.Version(DATASET_VERSION)
    # (clip file, caption) in the order to write; set before download_and_prepare.
    entries: list[tuple[str, str]] = []
    # Nothing to download; saying so also keeps tfds from looking for a checksums file beside this module.
    url_infos = {}

    def _info(self):
      # DatasetInfo directly: dataset_info_from_configs would look for metadata files beside this module.
      return tfds.core.DatasetInfo(builder=self, features=_features(), disable_shuffling=True,
                                   description="Kandinsky Video training clips (kvjax.data.prepare)")

    def _split_generators(self, dl_manager):
      return {SPLIT: self._generate_examples()}

    def _generate_examples(self):
      for path, caption in self.entries:
        meta = load_clip_meta(path)
        yield meta.clip_id, {
            "video": load_clip_frames(path), "caption": caption, "source_caption": meta.source_caption,
            "clip_id": meta.clip_id, "source": meta.source, "motion_score": meta.motion_score,
            "fps": meta.fps, "start_seconds": meta.start_seconds, "end_seconds": meta.end_seconds,
            "num_frames": meta.num_frames, "height": meta.height, "width": meta.width,
        }

  return KvjaxClips


def write_dataset(out_dir: str, entries: Sequence[tuple[str, str]]) -> str:
  """Builds the tfds dataset of `entries` ((clip file, caption), in order) under out_dir, replacing any
  previous one only once the new one is complete. Returns the dataset folder (with dataset_info.json)."""
  with staged(out_dir, overwrite=True) as staging:
    builder = _builder_class()(data_dir=staging, file_format="array_record")
    builder.entries = list(entries)
    downloads = os.path.join(staging, ".downloads")
    builder.download_and_prepare(download_dir=downloads)
    shutil.rmtree(downloads, ignore_errors=True)
  return dataset_folder(out_dir)


def dataset_folder(path: str) -> str:
  """The folder holding dataset_info.json: `path` itself, or the one tfds made below it."""
  if os.path.isfile(os.path.join(path, "dataset_info.json")):
    return path
  found = sorted(glob.glob(os.path.join(glob.escape(path), "**", "dataset_info.json"), recursive=True))
  if len(found) != 1:
    raise FileNotFoundError(f"{path}: expected one tfds dataset (dataset_info.json) below it, found {len(found)}")
  return os.path.dirname(found[0])


def shard_paths(dataset_dir: str, split: str = SPLIT) -> list[str]:
  """The ArrayRecord files of `split`, in order."""
  folder = dataset_folder(dataset_dir)
  with open(os.path.join(folder, "dataset_info.json")) as f:
    info = json.load(f)
  for entry in info.get("splits", []):
    if entry["name"] == split:
      pattern = f"{info['name']}-{split}.{info.get('fileFormat', 'array_record')}"
      shards = len(entry.get("shardLengths", [])) or 1
      return [os.path.join(folder, f"{pattern}-{i:05d}-of-{shards:05d}") for i in range(shards)]
  raise ValueError(f"{folder}: no split {split!r}")


def parse_example(record: bytes) -> dict:
  """A serialized example as {feature: value}; `video` stays a list of JPEG bytes so a reader decodes only
  the frames it uses (tfds's own data source decodes them all)."""
  from tensorflow_datasets.proto import tf_example_pb2
  features = tf_example_pb2.Example.FromString(record).features.feature
  out = {}
  for name, feature in features.items():
    kind = feature.WhichOneof("kind")
    values = list(getattr(feature, kind).value) if kind else []
    if name == "video":
      out[name] = values
    elif kind == "bytes_list":
      out[name] = values[0].decode("utf-8") if values else ""
    elif kind == "float_list":
      out[name] = np.float32(values[0])
    else:
      out[name] = np.int32(values[0])
  return out
