"""The latent normalization between the MoVQ and the UNets (kvjax.models.latent_normalization): calibrated
to unit variance with the box its latents occupy (the samplers' clamp), read strictly from a weights folder's latents.json, applied by the pipeline's
encode and decode programs and by training's clip encoder; absent, nothing changes (the reference)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax.models import latent_normalization as ln
from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS, GenerationOptions
from kvjax.pipeline.programs import StagePrograms
from kvjax.pipeline.pipeline_weights import random_weights
from kvjax.pipeline.stages import BASE_FRAMES, INTERPOLATION, KEY_FRAME

CONFIG = PIPELINE_PRESETS["tiny"]


def test_calibration_gives_unit_variance_and_the_box_the_latents_occupy():
  rng = np.random.default_rng(0)
  # Offset, unequal channels with a heavy tail, as a shapes-world MoVQ's (mostly background, a few shapes).
  latents = rng.normal([-0.9, 1.5, 0.2, -0.6], [0.15, 0.6, 0.4, 0.3], size=(20000, 4))
  latents[:200, 1] += 2.5
  normalization = ln.calibrate(latents)
  normalized = np.asarray(normalization.normalize(latents))
  np.testing.assert_allclose(normalized.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(normalized.std(0), 1, atol=1e-5)
  extent = np.abs(np.quantile(normalized, [ln.TAIL, 1 - ln.TAIL], axis=0)).max()
  np.testing.assert_allclose(normalization.sample_range, extent / ln.MARGIN, rtol=1e-6)
  assert np.mean(np.abs(normalized) > normalization.sample_range) < 1e-4
  np.testing.assert_allclose(normalization.denormalize(normalized), latents, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ln.calibrate(latents, std=0.5).normalize(latents)).std(0), 0.5, atol=1e-5)
  with pytest.raises(ValueError, match="not all finite"):
    ln.calibrate(np.full((4, 4), np.nan))


def test_the_samplers_clamp_to_the_normalizations_box():
  programs = StagePrograms(CONFIG)
  options = GenerationOptions()
  for stage in (KEY_FRAME, BASE_FRAMES, INTERPOLATION):
    reference = programs.sampler(stage, 2, options).scheduler
    assert reference.thresholding and reference.sample_max_value == 1.0  # the reference's [-1, 1]
    normalization = ln.LatentNormalization(np.zeros(4, np.float32), np.ones(4, np.float32), 6.5)
    scheduler = programs.sampler(stage, 2, options, normalization=normalization).scheduler
    assert (scheduler.thresholding, scheduler.clip_sample, scheduler.clip_sample_range) == (False, True, 6.5)
    assert scheduler.num_inference_steps == 2


def test_a_weights_folders_file_is_read_strictly(tmp_path):
  path = str(tmp_path / ln.LATENTS_FILE)
  assert ln.load(path, 4) is None  # no file: the reference's identity
  ln.save(ln.LatentNormalization(np.float32([0, 1, 2, 3]), np.float32([1, 0.5, 2, 1]), 7.25), path, source="test")
  loaded = ln.load(path, 4)
  np.testing.assert_array_equal(loaded.scale, [1, 0.5, 2, 1])
  assert loaded.sample_range == 7.25
  assert json.load(open(path))["source"] == "test"
  good = {"shift": [0] * 4, "scale": [1] * 4, "sample_range": 4}
  bad = {"not json": "{", "a list": "[]", "3 channels": json.dumps({**good, "shift": [0] * 3}),
         "no range": json.dumps({"shift": [0] * 4, "scale": [1] * 4}),
         "zero range": json.dumps({**good, "sample_range": 0}), "huge range": json.dumps({**good, "sample_range": 1e9}),
         "NaN range": json.dumps({**good, "sample_range": float("nan")}),
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
  from kvjax.training.train_config import TRAIN_PRESETS
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
  from kvjax.training.train_config import TRAIN_PRESETS
  from kvjax.training.precomputed import check_precomputed, write_precomputed
  config = TRAIN_PRESETS["keyframe-tiny"]
  normalization = ln.LatentNormalization(np.float32([0, 0, 0, 1]), np.float32([1, 1, 1, 2]))
  write_precomputed(str(tmp_path / "inputs"), config, [], normalization=normalization)
  check_precomputed(str(tmp_path / "inputs"), config, normalization)
  for other in (None, normalization.replace(scale=np.float32([1, 1, 1, 3]))):
    with pytest.raises(ValueError, match="made for other settings: latent_normalization"):
      check_precomputed(str(tmp_path / "inputs"), config, other)
