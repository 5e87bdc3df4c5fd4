import dataclasses
import functools
import json
import os

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testing_utils import FIXTURES, KEYFRAME_FIXTURE
from kvjax import model_configs
from kvjax.models.keyframe_unet import KeyframeUNet, reference_input_layer
from kvjax.conversion.unet import convert_unet
from kvjax.parity import verify_fixture
from kvjax.params import abstract_params, count_params

CFG = model_configs.KEYFRAME_TINY


@pytest.fixture(scope="module")
def params():
  """The fixture's weights: every one random, unlike a fresh init where many layers start at zero."""
  return convert_unet(os.path.join(KEYFRAME_FIXTURE, "t2v.pt"), CFG).params


@functools.lru_cache(maxsize=None)
def _forward(dtype, static: tuple):
  model = KeyframeUNet(CFG, dtype=dtype)
  return jax.jit(lambda p, args, kw: model.apply({"params": p}, *args, **kw, **dict(static)))


def _apply(params, *args, dtype=jnp.float32, **options):
  """Jitted forward, compiled once per dtype and Python-valued options (num_frames, input_layer)."""
  traced = {k: options.pop(k) for k in ("frame_index", "noise_aug_time", "motion_score") if k in options}
  run = _forward(dtype, tuple(sorted(options.items())))
  return np.asarray(run(params, args, traced).astype(jnp.float32))


def _inputs(batch, size=16, seed=1):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(batch, size, size, CFG.num_channels)).astype(np.float32)
  time = np.full((batch,), 500.0, np.float32)
  context = rng.normal(size=(batch, 5, CFG.context_dim)).astype(np.float32)
  mask = np.ones((batch, 5), bool)
  mask[:, 3:] = False
  context[~mask] = 0
  return x, time, context, mask


@pytest.mark.parametrize("fixture,cases", [
    ("keyframe_unet", ["keyframe_video", "keyframe_image"]),
    ("keyframe_unet_small", ["two_clips", "two_frames_batch_rule", "single_image"]),
])
def test_matches_the_reference_in_video_and_image_mode(fixture, cases):
  results = verify_fixture(os.path.join(FIXTURES, fixture, "manifest.json"))
  assert [r.name for r in results] == [f"{fixture}/{case}" for case in cases]
  for result in results:
    assert result.ok, result.line()
    assert result.rel_l2_error < 1e-5


def test_tiny_parameter_count_matches_the_reference_manifest():
  with open(os.path.join(KEYFRAME_FIXTURE, "manifest.json")) as f:
    manifest = json.load(f)
  assert count_params(abstract_params(CFG)) == manifest["num_parameters"]


def test_production_parameter_count_is_exact():
  assert count_params(abstract_params(model_configs.KEYFRAME_1_1)) == 4_149_077_956


def test_every_parameter_has_logical_axes():
  tree = flax.traverse_util.flatten_dict(abstract_params(CFG))
  for path, leaf in tree.items():
    assert isinstance(leaf, nn.Partitioned), path
    assert len(leaf.names) == len(leaf.value.shape), path


def test_reference_input_layer_rule():
  assert reference_input_layer(1) == "image"
  assert reference_input_layer(2) == "image"
  assert reference_input_layer(3) == "video"


def test_explicit_input_layer_overrides_the_batch_rule(params):
  x, time, context, mask = _inputs(2)
  default = _apply(params, x, time, context, mask)
  image = _apply(params, x, time, context, mask, input_layer="image")
  video = _apply(params, x, time, context, mask, input_layer="video")
  np.testing.assert_array_equal(default, image)
  assert np.abs(np.asarray(video) - np.asarray(image)).max() > 1e-4


def test_image_mode_does_not_touch_temporal_weights(params):
  x, time, context, mask = _inputs(2)
  flat = flax.traverse_util.flatten_dict(params)
  temporal = {p: v + 1.0 if any("temporal" in part for part in p) else v for p, v in flat.items()}
  assert sum(any("temporal" in part for part in p) for p in flat) > 50
  a = _apply(params, x, time, context, mask)
  b = _apply(flax.traverse_util.unflatten_dict(temporal), x, time, context, mask)
  np.testing.assert_array_equal(a, b)


def test_frames_interact_only_in_video_mode(params):
  x, time, context, mask = _inputs(4)
  frame_index = np.arange(4, dtype=np.float32)
  run = lambda x: (_apply(params, x, time, context, mask, frame_index=frame_index,
                                         num_frames=4, input_layer="video"))
  base = run(x)
  changed = x.copy()
  changed[0] += 1.0
  moved = run(changed)
  assert np.abs(moved[1:] - base[1:]).max() > 1e-5  # frame 0 reaches the others through temporal layers
  # Two videos of two frames: the second video does not see the first.
  run2 = lambda x: (_apply(params, x, time, context, mask,
                                          frame_index=np.array([0, 1, 0, 1], np.float32), num_frames=2))
  np.testing.assert_allclose(run2(changed)[2:], run2(x)[2:], atol=1e-6)


def test_padding_tokens_are_ignored(params):
  x, time, context, mask = _inputs(2)
  # Padded positions still count in the pooled query's mean, so only their keys/values may change freely
  # when the mean is kept: swap values between two padded positions.
  swapped = context.copy()
  swapped[:, 3], swapped[:, 4] = context[:, 4] + 1.0, context[:, 3] - 1.0
  a = _apply(params, x, time, context, mask)
  b = _apply(params, x, time, swapped, mask)
  np.testing.assert_allclose(a, b, atol=2e-5)


def test_a_model_trained_on_padded_pooling_ignores_the_prompt_length(params):
  # text_pooling="padded" (the demo's): the pooled query is the mean over every padded position, whatever L
  # the sampler passes; the plain forward without L pools that way too.
  x, time, context, mask = _inputs(2)
  padded = KeyframeUNet(dataclasses.replace(CFG, text_pooling="padded"))
  out = jax.jit(lambda p, length: padded.apply({"params": p}, x, time, context, mask, context_length=length))
  np.testing.assert_allclose(np.asarray(out(params, jnp.int32(4))), _apply(params, x, time, context, mask), atol=1e-6)
  with pytest.raises(ValueError, match="text_pooling must be one of prompt, padded, got 'mean'"):
    dataclasses.replace(CFG, text_pooling="mean")


def test_bfloat16_compute_stays_close_to_float32(params):
  x, time, context, mask = _inputs(2)
  f32 = _apply(params, x, time, context, mask)
  bf16 = _apply(params, x, time, context, mask, dtype=jnp.bfloat16)
  rel = np.linalg.norm(bf16 - f32) / np.linalg.norm(f32)
  assert rel < 3e-2


def test_bad_inputs_are_named(params):
  x, time, context, mask = _inputs(2, size=12)
  with pytest.raises(ValueError, match="multiples of 8"):
    _apply(params, x, time, context, mask)
  x, time, context, mask = _inputs(3)
  with pytest.raises(ValueError, match="num_frames"):
    _apply(params, x, time, context, mask, frame_index=np.zeros(3), num_frames=2)
  with pytest.raises(ValueError, match="channels-last"):
    _apply(params, x[..., :4], time, context, mask)
