"""Watching a run without running one: event files and their purge marker, device memory, the progress bar,
validation prompt files and options. (A run that writes them all: tests/train/test_train_cli.py.)"""

import io
import json
import os

import numpy as np
import pytest

from kvjax.training.train_config import TRAIN_PRESETS
from kvjax.training.validation import MAX_PROMPTS, read_prompts, validation_options
from kvjax.training.watch import EventLog, ProgressBar, device_memory, gif_bytes, read_events


def test_event_files_hold_scalars_gifs_and_the_purge_marker(tmp_path):
  events = EventLog(str(tmp_path), first_step=3)
  events.scalars(3, {"train/loss": 0.5, "perf/step_seconds": 2, "flag": True, "text": "x"})
  frames = np.zeros((4, 8, 16, 3), np.uint8)
  gif = gif_bytes(frames, 100)
  events.video(3, "validation/00-a-cat", frames, gif)
  events.close()
  [path] = list(tmp_path.iterdir())
  assert path.name.startswith("events.out.tfevents.")
  read = read_events(str(path))
  start = [e for e in read if e.HasField("session_log")]
  assert [(e.step, e.session_log.status) for e in start] == [(3, start[0].session_log.START)]
  values = {v.tag: v for e in read for v in e.summary.value}
  assert set(values) == {"train/loss", "perf/step_seconds", "validation/00-a-cat"}  # numbers only, bools aside
  assert values["train/loss"].simple_value == 0.5
  image = values["validation/00-a-cat"].image
  assert (image.width, image.height, image.encoded_image_string[:6]) == (16, 8, b"GIF89a")
  # a record cut short by a killed writer is left out, the ones before it read
  data = path.read_bytes()
  path.write_bytes(data[:-5])
  assert len(read_events(str(path))) == len(read) - 1


class _Device:
  def __init__(self, stats):
    self.stats = stats

  def memory_stats(self):
    return self.stats


def test_device_memory_is_the_largest_over_devices_and_absent_on_the_cpu():
  gib = 1 << 30
  devices = [_Device({"bytes_in_use": gib, "peak_bytes_in_use": 3 * gib}), _Device({"bytes_in_use": 2 * gib})]
  assert device_memory(devices) == {"memory/gib_in_use": 2.0, "memory/peak_gib": 3.0}
  assert device_memory([_Device(None)]) == {}  # what jax's CPU devices report


def test_the_progress_bar_counts_from_the_first_step_and_keeps_log_lines_above_it():
  out = io.StringIO()
  bar = ProgressBar(10, 110, stream=out)
  bar.update(11)  # the first step (its compile) does not count towards the speed
  assert "step 11/110" in out.getvalue() and "ETA ?" in out.getvalue()
  bar._first = (11, bar._first[1] - 10.0)  # as if 10 s had gone by
  bar.update(21)
  assert "1 steps/s" in out.getvalue() and "ETA 1:29" in out.getvalue()
  bar.say("step 21 loss 0.5")
  bar.close()
  assert out.getvalue().endswith("\r\033[Kstep 21 loss 0.5\n" + bar_line(out) + "\n")


def bar_line(out):
  return out.getvalue().rstrip("\n").split("\n")[-1]


def test_validation_prompt_files_are_read_and_bounded(tmp_path):
  path = tmp_path / "prompts.txt"
  path.write_text("# a comment\n  a red square  \n\na blue circle\n")
  assert read_prompts(str(path)) == ["a red square", "a blue circle"]
  path.write_text("".join(f"p{i}\n" for i in range(MAX_PROMPTS)))
  assert len(read_prompts(str(path))) == MAX_PROMPTS
  path.write_text("x" * 1001)
  with pytest.raises(ValueError, match=f"--validation-prompts {path}: prompt 1 is longer than 1000"):
    read_prompts(str(path))
  path.write_bytes(b"\xff\xfe")
  with pytest.raises(ValueError, match="not UTF-8"):
    read_prompts(str(path))


def test_validation_samples_at_the_run_size_with_the_weights_folders_settings(tmp_path):
  keyframe, interpolation = TRAIN_PRESETS["keyframe-tiny"], TRAIN_PRESETS["interpolation-tiny"]
  random = validation_options(keyframe, None)
  assert (random.width, random.height, random.fps, random.key_frame_steps) == (64, 64, "low", 4)
  assert validation_options(interpolation, None).fps == "medium"
  (tmp_path / "sampling.json").write_text(json.dumps({"key_frame_steps": 7, "motion": "high", "width": 128}))
  given = validation_options(keyframe, str(tmp_path))
  assert (given.key_frame_steps, given.motion, given.width) == (7, "high", 64)
  (tmp_path / "sampling.json").write_text(json.dumps({"steps": 7}))
  with pytest.raises(ValueError, match=f"{os.path.join(tmp_path, 'sampling.json')}: .*steps"):
    validation_options(keyframe, str(tmp_path))
