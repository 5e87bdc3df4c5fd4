"""`python -m convert all` on a tiny release folder assembled from the fixtures."""

import json
import os
import shutil

import numpy as np
import pytest

from testing_utils import FIXTURES
from convert.__main__ import main
from kvjax import model_configs
from kvjax.checkpoints.torch_zip_writer import write_torch_zip
from kvjax.conversion.store import load_converted

CONVERTED = ("keyframe", "interpolation", "movq", "video_movq", "projections", "t5")


def _projection_head(rng, cfg):
  return {"0.weight": rng.normal(size=(cfg.context_dim, cfg.in_dim)).astype(np.float32),
          "1.weight": rng.normal(size=(cfg.context_dim,)).astype(np.float32),
          "1.bias": rng.normal(size=(cfg.context_dim,)).astype(np.float32)}


@pytest.fixture
def release(tmp_path):
  src = tmp_path / "release"
  src.mkdir()
  for fixture, name in (("keyframe_unet", "t2v.pt"), ("interpolation_unet", "interpolation.pt"),
                        ("image_movq", "movq.pt"), ("video_movq", "video_movq.pt")):
    shutil.copy(os.path.join(FIXTURES, fixture, name), src / name)
  t5_manifest = json.load(open(os.path.join(FIXTURES, "t5_encoder", "manifest.json")))
  shutil.copytree(os.path.join(FIXTURES, "t5_encoder", t5_manifest["checkpoint"]), src / "flan_ul2")
  rng = np.random.default_rng(0)
  cfg = model_configs.TEXT_PROJECTIONS_TINY
  write_torch_zip(src / "t5_projections.pt", {"projection_base": _projection_head(rng, cfg),
                                              "projection_interpolation": _projection_head(rng, cfg)})
  # The official layout: one section per model, constructor arguments under "configs".
  sections = {"t2v": model_configs.KEYFRAME_TINY, "interpolation": model_configs.INTERPOLATION_TINY,
              "image_movq": model_configs.IMAGE_MOVQ_TINY, "video_movq": model_configs.VIDEO_MOVQ_TINY}
  official = {name: {"configs": cfg.to_dict()} for name, cfg in sections.items()}
  official["text_encoder"] = {"tokens_length": 128, "context_dim": cfg.context_dim, "weights_path": "google/flan-ul2"}
  (src / "model_configs.json").write_text(json.dumps(official))
  return src


def test_converts_every_model_of_a_release(release, tmp_path, capsys):
  out = tmp_path / "converted"
  assert main(["all", str(release), str(out), "--dtype", "bf16"]) == 0
  assert sorted(os.listdir(out)) == sorted(CONVERTED)
  expected = {"keyframe": model_configs.KEYFRAME_TINY, "interpolation": model_configs.INTERPOLATION_TINY,
              "movq": model_configs.IMAGE_MOVQ_TINY, "video_movq": model_configs.VIDEO_MOVQ_TINY,
              "projections": model_configs.TEXT_PROJECTIONS_TINY}
  for name in CONVERTED:
    loaded = load_converted(out / name)
    if name in expected:
      assert loaded.config == expected[name], name
    assert json.loads((out / name / "config.json").read_text())["dtype"] == "bfloat16"
  assert load_converted(out / "t5").config.d_model == model_configs.TEXT_PROJECTIONS_TINY.in_dim
  log = capsys.readouterr().out
  assert "model_configs.json [t2v]" in log and "model_configs.json [video_movq]" in log


def test_an_incomplete_release_names_what_is_missing_and_writes_nothing(release, tmp_path, capsys):
  os.remove(release / "video_movq.pt")
  shutil.rmtree(release / "flan_ul2")
  out = tmp_path / "converted"
  assert main(["all", str(release), str(out)]) == 2
  err = capsys.readouterr().err
  assert "T5 config.json" in err
  assert not out.exists() and os.listdir(tmp_path) == ["release"]


def test_a_bad_checkpoint_midway_leaves_nothing_behind(release, tmp_path, capsys):
  (release / "movq.pt").write_bytes(b"PK\x03\x04 truncated")
  out = tmp_path / "converted"
  assert main(["all", str(release), str(out)]) == 2
  assert "movq.pt" in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path)) == ["release"]
