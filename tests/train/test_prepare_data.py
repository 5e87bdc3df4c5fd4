"""python -m train.prepare_data: a folder of videos to a dataset the loader reads, the summary table, and
errors that name the problem."""

import json

import pytest

from data_testing_utils import moving_frames, write_video
from kvjax.data import prepare
from kvjax.data.loader import make_clip_loader
from train import prepare_data


@pytest.fixture
def videos(tmp_path):
  folder = tmp_path / "videos"
  folder.mkdir()
  write_video(folder / "pan.mp4", moving_frames(240, 320, 60, seed=1, pixels_per_frame=2), 24)
  write_video(folder / "still.mp4", moving_frames(240, 320, 60, seed=2), 24, metadata_title="a still field")
  write_video(folder / "slow.mp4", moving_frames(240, 320, 60, seed=3), 20)
  (folder / "broken.mp4").write_bytes(b"\x00" * 4096)
  return folder


def test_folder_to_dataset(videos, tmp_path, capsys):
  captions = tmp_path / "captions.jsonl"
  captions.write_text(json.dumps({"source": "pan.mp4", "caption": "a pan across a field"}) + "\n")
  args = [str(videos), str(tmp_path / "out"), "--captions", str(captions), "--short-side", "120", "--no-progress"]
  assert prepare_data.main(args) == 0
  table = capsys.readouterr().out
  assert "clips kept                 2" in table and "dropped: fps               1" in table
  assert "errors                     1" in table and "broken.mp4" in table

  batch = next(iter(make_clip_loader(str(tmp_path / "out"), batch_size=2, num_frames=8, resolution=(64, 64),
                                     seed=0, shard_index=0, shard_count=1)))
  assert batch["frames"].shape == (2, 8, 64, 64, 3)
  assert sorted(batch["caption"].tolist()) == ["a pan across a field", "a still field"]

  assert prepare_data.main(args) == 0  # again: nothing to redo
  assert "finished earlier         3" in capsys.readouterr().out


def test_defaults_are_the_papers():
  config = prepare_data.config_from_args(prepare_data.parse_args(["src", "out"]))
  assert config == prepare.PrepareConfig()
  assert (config.scenes.max_clip_seconds, config.transform.target_short_side, config.transform.target_fps) == (
      60.0, 1080, 24.0)


def test_errors_name_the_problem(videos, tmp_path, capsys):
  assert prepare_data.main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
  assert "source folder" in capsys.readouterr().err
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"source": "pan.mp4", "caption": "ok"}\n{"source": \n')
  assert prepare_data.main([str(videos), str(tmp_path / "out"), "--captions", str(bad)]) == 2
  assert "bad.jsonl:2: not JSON" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()  # refused before any work
  assert prepare_data.main([str(videos), str(tmp_path / "out"), "--motion", "raft"]) == 2
  assert "RAFT weights" in capsys.readouterr().err


def test_raft_motion_scores(videos, tmp_path, capsys):
  """`--motion raft` with a local torchvision state dict (random weights: the path, not the flow's quality)."""
  torch = pytest.importorskip("torch")
  try:
    from torchvision.models import optical_flow
  except (ImportError, RuntimeError) as e:  # none, or one built for another torch (the registry's CUDA wheels)
    pytest.skip(f"no torchvision for this torch: {e}")
  torch.manual_seed(0)
  weights = tmp_path / "raft_small.pth"
  torch.save(optical_flow.raft_small(weights=None).state_dict(), weights)
  out = tmp_path / "out"
  args = [str(videos), str(out), "--short-side", "64", "--no-progress", "--motion", "raft", "--raft-variant",
          "raft_small", "--raft-weights", str(weights)]
  assert prepare_data.main(args) == 0
  assert "clips kept                 2" in capsys.readouterr().out
  import numpy as np
  import tensorflow_datasets as tfds
  scores = [float(e["motion_score"]) for e in tfds.builder_from_directory(
      str(out / "dataset" / "kvjax_clips" / "1.0.0")).as_data_source("train")]
  assert len(scores) == 2 and np.all(np.isfinite(scores)) and max(scores) > 0

  torch.save(optical_flow.raft_large(weights=None).state_dict(), weights)  # another variant's weights
  assert prepare_data.main([*args[:-1], str(weights)]) == 2
  assert "not a torchvision raft_small state dict" in capsys.readouterr().err
