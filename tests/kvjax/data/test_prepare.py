"""The preparation pipeline over the rule videos (data_testing_utils.make_source_folder): every rule, the
summary, captions, the dataset, resumability and errors."""

import glob

import numpy as np
import pytest

from kvjax.data import dataset, prepare
from kvjax.data.dataset import load_clip_meta


def clips_of(out, name):
  """{clip_id: ClipMeta} of the source `name` (relative path)."""
  metas = [load_clip_meta(path) for path in glob.glob(str(out / "work" / "clips" / "*.npz"))]
  return {meta.clip_id: meta for meta in sorted(metas, key=lambda m: m.clip_id) if meta.source == name}


def ledger(out):
  import json
  entries = [json.load(open(path)) for path in glob.glob(str(out / "work" / "sources" / "*.json"))]
  return {entry["source"]: entry for entry in entries}


def test_summary_counts(prepared):
  summary, _ = prepared
  assert summary.sources == 12
  # cut: 2 clips, long: 3, letterbox, pillarbox, static, fast: 1 each; lowfps, short, small, thin: 1 each.
  assert summary.clips_in == 13 and summary.clips_kept == 9
  assert summary.dropped == {"duration": 1, "size": 2, "fps": 1}
  assert len(summary.errors) == 2
  table = summary.table()
  for row in ("clips in", "clips kept", "dropped: duration", "dropped: size", "dropped: fps", "errors"):
    assert row in table


def test_hard_cut_gives_two_clips(prepared):
  _, out = prepared
  clips = list(clips_of(out, "cut.mp4").values())
  assert [t for c in clips for t in (c.start_seconds, c.end_seconds)] == pytest.approx([0, 2.5, 2.5, 5.0], abs=0.1)


def test_long_scene_is_cut_into_equal_parts(prepared):
  _, out = prepared
  clips = list(clips_of(out, "long.mp4").values())
  assert len(clips) == 3
  assert all(c.end_seconds - c.start_seconds == pytest.approx(7 / 3, abs=0.05) for c in clips)


@pytest.mark.parametrize("name,reason", [("lowfps.mp4", "fps"), ("short.mp4", "duration"), ("small.mp4", "size"),
                                         ("thin.mp4", "size")])
def test_filters_drop_with_reason(prepared, name, reason):
  _, out = prepared
  entry = ledger(out)[name]
  assert entry["kept"] == [] and [drop["reason"] for drop in entry["drops"]] == [reason]
  assert entry["drops"][0]["detail"]


def test_black_borders_are_cropped(prepared):
  _, out = prepared
  letterbox, = clips_of(out, "letterbox.mp4").values()
  pillarbox, = clips_of(out, "pillarbox.mp4").values()
  assert letterbox.crop == (0, 42, 384, 216)
  assert pillarbox.crop == (48, 0, 288, 288)
  # Then the short side goes down to 120: 384x216 -> 214x120 (even), 288x288 -> 120x120.
  assert (letterbox.width, letterbox.height) == (214, 120)
  assert (pillarbox.width, pillarbox.height) == (120, 120)
  frames = [dataset.decode_jpeg(f) for f in dataset.load_clip_frames(
      str(out / "work" / "clips" / f"{letterbox.clip_id}.npz"))]
  assert frames[0].shape == (120, 214, 3)
  assert min(frame[:2].mean() for frame in frames) > 24  # no black rows left at the top


def test_resize_and_fps_conversion(prepared):
  _, out = prepared
  static, = clips_of(out, "motion/static.mp4").values()  # 320x240 at 30 fps, 2.5 s
  assert (static.width, static.height) == (160, 120)
  assert static.fps == 24 and static.num_frames == 60


def test_motion_score_static_versus_fast(prepared):
  _, out = prepared
  static, = clips_of(out, "motion/static.mp4").values()
  fast, = clips_of(out, "motion/fast.mp4").values()
  assert static.motion_score < 0.05
  # 4 px per frame at 240 px short side is ~2.1 px per frame at the 128 px analysis size.
  assert fast.motion_score > 1.5 and fast.motion_score > 20 * static.motion_score


def test_corrupt_files_are_reported_and_skipped(prepared):
  summary, out = prepared
  for name in ("corrupt.mp4", "truncated.mp4"):
    assert any(name in error for error in summary.errors)
    assert name not in ledger(out)  # not recorded: the next run tries it again


def test_dataset_holds_the_kept_clips_with_captions(prepared):
  import tensorflow_datasets as tfds
  summary, out = prepared
  source = tfds.builder_from_directory(summary.dataset_dir).as_data_source("train")
  assert len(source) == 9
  examples = {example["clip_id"].decode(): example for example in source}
  cut_first, cut_second = sorted(clip for clip in examples if clip.startswith("cut-"))
  assert examples[cut_first]["caption"] == b"the first scene"  # by clip id
  assert examples[cut_second]["caption"] == b"two scenes"  # no entry: the source's container title
  assert examples[cut_second]["source_caption"] == b"two scenes"
  fast = next(e for e in examples.values() if e["source"] == b"motion/fast.mp4")
  assert fast["caption"] == b"a fast pan" and fast["source_caption"] == b""  # by source path
  assert {e["caption"] for e in examples.values() if e["source"] == b"long.mp4"} == {b"a long slow pan"}
  static = next(e for e in examples.values() if e["source"] == b"motion/static.mp4")
  assert static["caption"] == static["source_caption"] == b"a still picture"  # sidecar .txt
  video = np.stack(static["video"])
  assert video.dtype == np.uint8 and video.shape == (60, 120, 160, 3)
  assert static["fps"] == 24 and static["motion_score"] == pytest.approx(0, abs=0.05)
  assert static["end_seconds"] == pytest.approx(2.5)
  assert "tensorflow" not in __import__("sys").modules


def test_dataset_order_is_shuffled_by_seed(prepared, tmp_path):
  import tensorflow_datasets as tfds
  summary, out = prepared
  clip_ids = [e["clip_id"] for e in tfds.builder_from_directory(summary.dataset_dir).as_data_source("train")]
  assert clip_ids != sorted(clip_ids)


def test_missing_source_folder_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    prepare.prepare(str(tmp_path / "missing"), str(tmp_path / "out"), progress=False)
