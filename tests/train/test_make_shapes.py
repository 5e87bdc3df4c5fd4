"""python -m train.make_shapes: real mp4 files and captions that python -m train.prepare_data keeps whole,
with motion scores ordered by speed and colours that still show where each shape went."""

import contextlib
import io
import json

import numpy as np
import pytest

from kvjax.data import shapes
from kvjax.data.loader import make_clip_loader
from train import make_shapes, prepare_data

SECONDS, SHORT_SIDE = 2.5, 64


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(videos folder, prepared folder, prepare_data's table) of 3 videos: one scene at the three speeds."""
  root = tmp_path_factory.mktemp("shapes")
  videos, out = root / "videos", root / "prepared"
  assert make_shapes.main([str(videos), "--videos", "3", "--seconds", str(SECONDS), "--seed", "1"]) == 0
  table = io.StringIO()
  with contextlib.redirect_stdout(table):
    assert prepare_data.main([str(videos), str(out), "--captions", str(videos / "captions.jsonl"),
                              "--short-side", str(SHORT_SIDE), "--no-progress"]) == 0
  return videos, out, table.getvalue()


def test_writes_videos_and_captions(prepared):
  from kvjax.data import video_io
  videos, _, _ = prepared
  entries = [json.loads(line) for line in (videos / "captions.jsonl").read_text().splitlines()]
  assert [e["source"] for e in entries] == ["shapes-00000.mp4", "shapes-00001.mp4", "shapes-00002.mp4"]
  assert sorted(p.name for p in videos.iterdir()) == ["captions.jsonl"] + [e["source"] for e in entries]
  specs = [shapes.ShapeSpec.from_json(e["spec"]) for e in entries]
  assert [s.speed_class for s in specs] == ["slow", "medium", "fast"]
  assert len({(s.shape, s.colour, s.direction, s.background, s.size) for s in specs}) == 1  # one scene
  assert [e["caption"] for e in entries] == [shapes.caption(s) for s in specs]
  info = video_io.probe(str(videos / "shapes-00000.mp4"))
  assert (info.width, info.height, info.fps) == (256, 256, 24.0) and abs(info.duration - SECONDS) < 0.1
  assert info.source_caption == entries[0]["caption"]  # the title tag


def test_prepare_data_keeps_every_clip(prepared):
  videos, out, table = prepared
  assert "clips kept                 3" in table and "errors                     0" in table
  entries = {e["caption"]: shapes.ShapeSpec.from_json(e["spec"])
             for e in map(json.loads, (videos / "captions.jsonl").read_text().splitlines())}
  num_frames = round(SECONDS * 24)
  loader = make_clip_loader(str(out), batch_size=3, num_frames=num_frames, resolution=(SHORT_SIDE, SHORT_SIDE),
                            seed=0, shard_index=0, shard_count=1, shuffle=False, num_epochs=1)
  batch = next(iter(loader))
  assert sorted(batch["caption"].tolist()) == sorted(entries)  # captions carried over

  scores = {entries[str(text)].speed_class: float(score)
            for text, score in zip(batch["caption"], batch["motion_score"])}
  assert scores["slow"] < scores["medium"] < scores["fast"], scores

  scale = SHORT_SIDE / shapes.REFERENCE_SIDE
  for frames, text in zip(batch["frames"], batch["caption"]):
    spec, named = entries[str(text)], shapes.parse_caption(str(text))
    track = shapes.centroid_track(frames, named["colour"])
    assert not np.isnan(track).any(), text  # the colour survives H.264, resizing and JPEG
    dy, dx = shapes.DIRECTIONS[named["direction"]]
    expected = np.array([dx, dy]) * spec.speed * (num_frames - 1) * scale
    np.testing.assert_allclose(shapes.dominant_motion(track), expected, atol=0.75)
    if named["speed_class"] != "slow":  # the later judges' rule: a quarter of the frame the named way
      assert np.dot(shapes.dominant_motion(track), (dx, dy)) >= SHORT_SIDE / 4


def test_errors_name_the_problem(prepared, tmp_path, capsys, monkeypatch):
  videos, _, _ = prepared
  assert make_shapes.main([str(videos), "--videos", "1"]) == 2
  assert "exists; pass --overwrite" in capsys.readouterr().err
  for flags, message in ((["--videos", "0"], "--videos 0"), (["--videos", "1", "--size", "99"], "--size 99"),
                         (["--videos", "1", "--seconds", "-1"], "must be positive"),
                         (["--videos", "1", "--size", "100000"], "at most 4096"),
                         (["--videos", "1", "--seconds", "1e9"], "GiB of frames each"),
                         (["--videos", "10000000"], "at most 1000000"),
                         (["--videos", "1", "--size-word", "tiny"], "--size-word 'tiny': give one of huge"),
                         (["--videos", "1", "--size-word", "huge", "--size-word-share", "2"],
                          "--size-word-share 2.0: give a share in [0, 1]")):
    assert make_shapes.main([str(tmp_path / "bad"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
  assert not (tmp_path / "bad").exists()
  unwritable = tmp_path / "a-file"
  unwritable.write_text("")
  assert make_shapes.main([str(unwritable / "videos"), "--videos", "1"]) == 2  # a parent that is a file
  err = capsys.readouterr().err
  assert err == f"error: {unwritable} is a file, not a folder\n"

  assert make_shapes.main([str(tmp_path / "small"), "--videos", "1", "--seconds", "1", "--size", "64"]) == 0
  err = capsys.readouterr().err
  assert "default duration filter" in err and "default size filter" in err

  calls = []

  def failing(path, frames, fps, title=""):
    calls.append(path)
    if len(calls) == 2:
      raise RuntimeError("disk full")
    return real(path, frames, fps, title)

  real = make_shapes.write_mp4
  monkeypatch.setattr(make_shapes, "write_mp4", failing)
  with pytest.raises(RuntimeError, match="disk full"):
    make_shapes.main([str(tmp_path / "half"), "--videos", "3", "--size", "32", "--seconds", "0.5"])
  assert not (tmp_path / "half").exists() and not list(tmp_path.glob(".half*"))  # nothing half-written


def test_size_word_scenes_are_spread_evenly():
  """--size-word-share 0.75: three scenes of four have the word (the videos of a scene share it); no word: the
  world's own specs, as before."""
  words = [make_shapes.video_spec(0, i, 24, 64, "huge", 0.75).size_word for i in range(12)]
  assert words == [""] * 3 + ["huge"] * 9
  assert [make_shapes.video_spec(0, i, 24, 64) for i in range(6)] == \
         [make_shapes.video_spec(0, i, 24, 64, "huge", 0.0) for i in range(6)]
