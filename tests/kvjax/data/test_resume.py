"""Resumability: a run cut short keeps every finished clip, the next run makes only what is missing, a run
over finished work redoes nothing and writes the same dataset."""

import glob
import os
import shutil

import pytest

from kvjax.data import dataset, prepare, scenes, sources


def dataset_clip_ids(summary):
  import tensorflow_datasets as tfds
  return [e["clip_id"] for e in tfds.builder_from_directory(summary.dataset_dir).as_data_source("train")]


@pytest.fixture
def small_folder(source_folder, tmp_path):
  """cut.mp4 (two clips), static.mp4 (one) and the corrupt file."""
  folder = tmp_path / "videos"
  folder.mkdir()
  for name in ("cut.mp4", "motion/static.mp4", "corrupt.mp4"):
    shutil.copy(source_folder / name, folder / os.path.basename(name))
  return folder


def test_crash_keeps_finished_clips_and_rerun_completes(small_folder, tmp_path, test_config, monkeypatch):
  out = tmp_path / "out"
  real_save = sources.save_clip
  saved = []

  def save_then_crash(*args, **kwargs):
    if len(saved) == 1:
      raise KeyboardInterrupt  # the machine goes away while making the second clip
    real_save(*args, **kwargs)
    saved.append(args[0])

  monkeypatch.setattr(sources, "save_clip", save_then_crash)
  with pytest.raises(KeyboardInterrupt):
    prepare.prepare(str(small_folder), str(out), config=test_config, progress=False)
  assert [os.path.basename(p) for p in glob.glob(str(out / "work" / "clips" / "*"))] == [os.path.basename(saved[0])]
  assert not os.path.exists(out / "dataset")
  made_at = os.stat(saved[0]).st_mtime_ns

  monkeypatch.setattr(sources, "save_clip", real_save)
  summary = prepare.prepare(str(small_folder), str(out), config=test_config, progress=False)
  assert summary.clips_kept == 3 and summary.clips_reused == 1 and len(summary.errors) == 1
  assert os.stat(saved[0]).st_mtime_ns == made_at  # not made again
  first_ids = dataset_clip_ids(summary)

  mtimes = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(out / "work" / "clips" / "*.npz"))}
  again = prepare.prepare(str(small_folder), str(out), config=test_config, progress=False)
  assert again.sources_finished_earlier == 2 and again.clips_kept == 3 and len(again.errors) == 1
  assert {p: os.stat(p).st_mtime_ns for p in mtimes} == mtimes
  assert dataset_clip_ids(again) == first_ids
  assert not glob.glob(str(out / "**" / "*.partial-*"), recursive=True)


def test_changed_source_is_made_again(small_folder, tmp_path, test_config, source_folder):
  out = tmp_path / "out"
  prepare.prepare(str(small_folder), str(out), config=test_config, progress=False)
  shutil.copy(source_folder / "long.mp4", small_folder / "static.mp4")  # same name, other content
  summary = prepare.prepare(str(small_folder), str(out), config=test_config, progress=False)
  assert summary.sources_finished_earlier == 1
  static_clips = [clip for clip in dataset_clip_ids(summary) if clip.startswith(b"static-")]
  assert len(static_clips) == 3  # long.mp4's three clips


def test_other_settings_are_refused(small_folder, tmp_path, test_config):
  out = tmp_path / "out"
  os.remove(small_folder / "cut.mp4")
  prepare.prepare(str(small_folder), str(out), config=test_config, progress=False)
  other = prepare.PrepareConfig(scenes=scenes.SceneConfig(max_clip_seconds=10.0))
  with pytest.raises(ValueError, match="other settings"):
    prepare.prepare(str(small_folder), str(out), config=other, progress=False)


def test_parallel_workers_match_one_process(small_folder, tmp_path, test_config):
  one = prepare.prepare(str(small_folder), str(tmp_path / "one"), config=test_config, progress=False)
  two = prepare.prepare(str(small_folder), str(tmp_path / "two"), config=test_config, progress=False, workers=2)
  assert dataset_clip_ids(one) == dataset_clip_ids(two)
  assert (one.clips_kept, one.dropped, len(one.errors)) == (two.clips_kept, two.dropped, len(two.errors))
  for path in glob.glob(str(tmp_path / "one" / "work" / "clips" / "*.npz")):
    other = path.replace(f"{os.sep}one{os.sep}", f"{os.sep}two{os.sep}")
    assert dataset.load_clip_meta(path) == dataset.load_clip_meta(other)


def test_no_clips_kept_writes_no_dataset(small_folder, tmp_path, test_config):
  for name in ("cut.mp4", "static.mp4"):
    os.remove(small_folder / name)
  summary = prepare.prepare(str(small_folder), str(tmp_path / "out"), config=test_config, progress=False)
  assert summary.clips_kept == 0 and len(summary.errors) == 1 and summary.dataset_dir == ""
  assert "dataset: not written (no clips kept)" in summary.table()
