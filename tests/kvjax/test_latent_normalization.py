"""The latent normalization between the MoVQ and the UNets (kvjax.models.latent_normalization): calibrated
into the samplers' [-1, 1], read strictly from a weights folder's latents.json, applied by the pipeline's
encode and decode programs and by training's clip encoder; absent, nothing changes (the reference)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax.models import latent_normalization as ln
from kvjax.pipeline.config import PIPELINE_PRESETS
from kvjax.pipeline.programs import StagePrograms
from kvjax.pipeline.weights import random_weights

CONFIG = PIPELINE_PRESETS["tiny"]


def test_calibration_maps_each_channels_range_inside_the_clamp():
  rng = np.random.default_rng(0)
  # Offset, unequal channels with a heavy tail, as a shapes-world MoVQ's (mostly background, a few shapes).
  latents = rng.normal([-0.9, 1.5, 0.2, -0.6], [0.15, 0.6, 0.4, 0.3], size=(20000, 4))
  latents[:200, 1] += 2.5
  normalization = ln.calibrate(latents)
  normalized = np.asarray(normalization.normalize(latents))
  assert np.mean(np.abs(normalized) > 1) < 1e-3
  np.testing.assert_allclose(np.quantile(normalized, [ln.TAIL, 1 - ln.TAIL], axis=0),
                             [[-ln.MARGIN] * 4, [ln.MARGIN] * 4], atol=1e-4)
  np.testing.assert_allclose(normalization.denormalize(normalized), latents, atol=1e-5)
  with pytest.raises(ValueError, match="not all finite"):
    ln.calibrate(np.full((4, 4), np.nan))


def test_a_weights_folders_file_is_read_strictly(tmp_path):
  path = str(tmp_path / ln.LATENTS_FILE)
  assert ln.load(path, 4) is None  # no file: the reference's identity
  ln.save(ln.LatentNormalization(np.float32([0, 1, 2, 3]), np.float32([1, 0.5, 2, 1])), path, source="test")
  loaded = ln.load(path, 4)
  np.testing.assert_array_equal(loaded.scale, [1, 0.5, 2, 1])
  assert json.load(open(path))["source"] == "test"
  bad = {"not json": "{", "a list": "[]", "3 channels": json.dumps({"shift": [0] * 3, "scale": [1] * 4}),
         "a string": json.dumps({"shift": ["0"] * 4, "scale": [1] * 4}),
         "a bool": json.dumps({"shift": [True] * 4, "scale": [1] * 4}),
         "infinite": '{"shift": [0, 0, 0, Infinity], "scale": [1, 1, 1, 1]}',
         "overflow": json.dumps({"shift": [0] * 4, "scale": [1e300] * 4}),
         "zero scale": json.dumps({"shift": [0] * 4, "scale": [1, 0, 1, 1]}), "huge": " " * (ln.MAX_FILE_BYTES + 1)}
  for text in bad.values():
    (tmp_path / ln.LATENTS_FILE).write_text(text)
    with pytest.raises(ValueError, match=ln.LATENTS_FILE):
      ln.load(path, 4)


def test_the_pipeline_programs_and_the_clip_encoder_apply_it():
  from kvjax.sharding import make_mesh
  from kvjax.text.hashed_tokenizer import HashedWordTokenizer
  from kvjax.training.config import TRAIN_PRESETS
  from kvjax.training.inputs import ClipEncoder
  weights = random_weights(CONFIG)
  normalization = ln.LatentNormalization(jnp.float32([0.5, -0.25, 0, 1]), jnp.float32([2, 0.5, 1, 4]))
  programs = StagePrograms(CONFIG)
  frames = np.random.default_rng(0).integers(0, 256, (8, 1, 32, 32, 3), np.uint8)
  pixels = frames[:, 0].astype(np.float32) / 255 * 2 - 1
  encode = jax.jit(programs.encode())
  raw = encode(weights.image_movq, None, pixels)
  np.testing.assert_allclose(encode(weights.image_movq, normalization, pixels), normalization.normalize(raw),
                             rtol=1e-6, atol=1e-6)
  decode = jax.jit(programs.decode(1))
  np.testing.assert_allclose(decode(weights.video_movq, normalization, normalization.normalize(raw)),
                             decode(weights.video_movq, None, raw), rtol=1e-4, atol=1e-5)

  config = TRAIN_PRESETS["keyframe-tiny"]
  tokenizer = HashedWordTokenizer(CONFIG.text_encoder.vocab_size, CONFIG.tokens_length)
  mesh = make_mesh("")
  latents = lambda w: ClipEncoder(config, w, tokenizer, mesh).encode(frames, ["a red circle"] * 8)["latents"]
  np.testing.assert_allclose(latents(weights.replace(latent_normalization=normalization)),
                             normalization.normalize(latents(weights)), rtol=1e-6, atol=1e-6)


def test_precomputed_latents_are_refused_under_another_normalization(tmp_path):
  from kvjax.training.config import TRAIN_PRESETS
  from kvjax.training.precomputed import check_precomputed, write_precomputed
  config = TRAIN_PRESETS["keyframe-tiny"]
  normalization = ln.LatentNormalization(np.float32([0, 0, 0, 1]), np.float32([1, 1, 1, 2]))
  write_precomputed(str(tmp_path / "inputs"), config, [], normalization=normalization)
  check_precomputed(str(tmp_path / "inputs"), config, normalization)
  for other in (None, normalization.replace(scale=np.float32([1, 1, 1, 3]))):
    with pytest.raises(ValueError, match="made for other settings: latent_normalization"):
      check_precomputed(str(tmp_path / "inputs"), config, other)
