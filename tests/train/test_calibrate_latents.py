"""python -m train.calibrate_latents: a weights folder's latents.json from its MoVQ on a prepared dataset,
which loading the folder then carries (the UNets train on it, sampling applies it)."""

import json

import numpy as np

from kvjax.models.latent_normalization import LATENTS_FILE
from kvjax.pipeline.pipeline_weights import load_pipeline_weights
from train.calibrate_latents import main as calibrate
from train.init_weights import main as init_weights


def test_writes_the_folders_normalization_once(tmp_path, dataset, capsys):
  weights = str(tmp_path / "w")
  captions = tmp_path / "c.jsonl"
  captions.write_text(json.dumps({"caption": "a field panned"}) + "\n")
  assert init_weights([weights, "--pipeline", "tiny", "--captions", str(captions)]) == 0
  assert load_pipeline_weights(weights, 16)[1].latent_normalization is None
  argv = [weights, "--config", "keyframe-tiny", "--data", str(dataset), "--clips", "4", "--batch-size", "2"]
  assert calibrate(argv) == 0
  assert "4 clips" in capsys.readouterr().err
  normalization = load_pipeline_weights(weights, 16)[1].latent_normalization
  assert normalization.shift.shape == normalization.scale.shape == (4,) and np.all(normalization.scale > 0)
  assert 1 < normalization.sample_range < 100  # unit-variance latents reach past the reference's [-1, 1]
  before = (tmp_path / "w" / LATENTS_FILE).read_text()
  for bad, message in ((argv, "exists"), ([weights, "--config", "image-movq-tiny", "--data", str(dataset), "--overwrite"],
                                          "a MoVQ preset"), ([str(tmp_path), *argv[1:], "--overwrite"], "no converted image MoVQ"),
                       ([*argv, "--overwrite", "--std", "0"], "--std 0"),
                       ([*argv, "--overwrite", "--set", "num_frames=many"],
                        "--set num_frames='many': expected an integer")):
    assert calibrate(bad) == 2, bad
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, (message, err)
  assert (tmp_path / "w" / LATENTS_FILE).read_text() == before
