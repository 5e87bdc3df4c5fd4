"""The rules on their own: filters at their limits, clip spans, border detection, resize, captions, motion."""

import json

import numpy as np
import pytest

from data_testing_utils import moving_frames, with_borders
from kvjax.data import captions, filters, motion, scenes, transforms


def test_filter_limits_are_the_papers():
  config = filters.FilterConfig()
  assert (config.min_seconds, config.min_area, config.min_side, config.min_fps) == (2.0, 256 * 256, 128, 23.0)
  assert filters.check_duration(1.99, config).reason == "duration" and filters.check_duration(2.0, config) is None
  assert filters.check_fps(22.9, config).reason == "fps" and filters.check_fps(23.976, config) is None
  assert filters.check_size(255, 256, config).reason == "size"  # area
  assert filters.check_size(600, 127, config).reason == "size"  # a side
  assert filters.check_size(256, 256, config) is None


def test_clip_spans():
  # Under the maximum: whole, whatever the cuts.
  assert scenes.clip_spans(100, 24, [50], max_clip_seconds=60) == [(0, 100)]
  # Over it: at the cuts, and a scene over the maximum in equal parts.
  assert scenes.clip_spans(240, 24, [100], max_clip_seconds=5) == [(0, 100), (100, 170), (170, 240)]
  assert scenes.clip_spans(0, 24, [], max_clip_seconds=5) == []


def test_scene_cutter_finds_a_hard_cut():
  cutter = scenes.SceneCutter(24.0, scenes.SceneConfig())
  frames = np.concatenate([moving_frames(64, 96, 30, seed=1), moving_frames(64, 96, 30, seed=2)[..., ::-1]])
  for frame in frames:
    cutter.update(frame)
  assert cutter.finish() == [30]


def test_border_detection():
  config = transforms.TransformConfig()
  profile = transforms.BorderProfile(block_frames=4)
  for frame in with_borders(moving_frames(60, 80, 12, seed=3), top=10, bottom=10, left=6, right=4):
    profile.update(frame)
  assert transforms.detect_borders(*profile.span(0, 12), config) == transforms.CropBox(6, 10, 80, 60)
  # A dark picture is not a border; nor is a bar covering more than max_border_fraction.
  dark = np.zeros((40, 64), np.uint8)
  assert transforms.detect_borders(dark[:, 0], dark[0], config) == transforms.CropBox(0, 0, 64, 40)
  rows = np.r_[np.zeros(30), np.full(10, 200)]
  assert transforms.detect_borders(rows, np.full(64, 200), config).height == 40


def test_resized_size():
  assert transforms.resized_size(1920, 1080, 1080) == (1920, 1080)
  assert transforms.resized_size(3840, 2160, 1080) == (1920, 1080)
  assert transforms.resized_size(1440, 2560, 1080) == (1080, 1920)
  assert transforms.resized_size(640, 480, 1080) == (640, 480)  # never up


def write_lines(path, lines):
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_captions_file(tmp_path):
  path = write_lines(tmp_path / "c.jsonl", [json.dumps({"clip_id": "a-1-000", "caption": "by id"}),
                                            json.dumps({"source": "./dir/b.mp4", "caption": "by source"}),
                                            "", json.dumps({"c.mp4": "short form"})])
  table = captions.load_captions(path)
  find = lambda clip_id, source: captions.caption_for(table, clip_id=clip_id, source=source, src_dir="/src",
                                                      source_caption="own")
  assert find("a-1-000", "a.mp4") == "by id"
  assert find("b-2-000", "dir/b.mp4") == "by source"
  assert find("c-3-001", "c.mp4") == "short form"
  assert find("d-4-000", "d.mp4") == "own"
  absolute = write_lines(tmp_path / "abs.jsonl", [json.dumps({"path": "/src/e.mp4", "caption": "absolute"})])
  assert captions.caption_for(captions.load_captions(absolute), clip_id="x", source="e.mp4", src_dir="/src",
                              source_caption="") == "absolute"


@pytest.mark.parametrize("lines,message", [
    (['{"clip_id": "a", "caption": "x"}', "{not json"], r"bad\.jsonl:2: not JSON"),
    (['[1, 2]'], r"bad\.jsonl:1: expected an object"),
    (['{"caption": "x"}'], r"bad\.jsonl:1: no key"),
    (['{"clip_id": "a", "caption": 3}'], r"bad\.jsonl:1: key and caption must be strings"),
])
def test_bad_captions_file_names_the_line(tmp_path, lines, message):
  with pytest.raises(captions.CaptionsError, match=message):
    captions.load_captions(write_lines(tmp_path / "bad.jsonl", lines))


def test_missing_captions_file(tmp_path):
  with pytest.raises(captions.CaptionsError, match="does not exist"):
    captions.load_captions(str(tmp_path / "none.jsonl"))


def test_farneback_measures_a_known_shift():
  frames = moving_frames(128, 160, 4, seed=4, pixels_per_frame=3)
  meter = motion.MotionMeter(motion.FarnebackFlow(), analysis_short_side=128)
  for frame in frames:
    meter.update(frame)
  assert meter.score == pytest.approx(3.0, rel=0.15)


def test_pluggable_flow():
  calls = []

  def constant_flow(previous, current):
    calls.append(previous.shape)
    return np.full(previous.shape[:2] + (2,), [3.0, 4.0])

  meter = motion.MotionMeter(motion.CallableFlow(constant_flow), analysis_short_side=32)
  for frame in moving_frames(64, 96, 3, seed=5):
    meter.update(frame)
  assert meter.score == pytest.approx(5.0) and calls == [(32, 48, 3)] * 2


def test_raft_needs_weights(tmp_path):
  with pytest.raises(FileNotFoundError, match="RAFT weights"):
    motion.RaftFlow(str(tmp_path / "missing.pth"))
  with pytest.raises(ValueError, match="unknown motion method"):
    motion.make_estimator(motion.MotionConfig(method="optical"))
