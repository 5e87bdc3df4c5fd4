"""The reference's samplers: a 3-step parity case against the official loops, compile-once, layouts."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testing_utils import FIXTURES
from kvjax.diffusion import guidance
from kvjax.diffusion.schedule import SchedulerConfig
from kvjax.params import build_model, init_params
from kvjax.parity import verify_fixture
from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS
from kvjax.pipeline import samplers
from kvjax.text.conditioning import unconditional_context


def test_three_step_loops_match_the_reference_with_its_noise():
  results = verify_fixture(os.path.join(FIXTURES, "keyframe_sampling", "manifest.json"))
  assert [r.name for r in results] == ["keyframe_sampling/first_frame_loop", "keyframe_sampling/base_frames_loop"]
  for result in results:
    assert result.ok, result.line()


def test_interpolation_loop_matches_the_reference_with_its_noise():
  # The pipeline's 10 trailing v-prediction steps, guidance 0.5, skip 3: the loop's groups and the
  # interleaved video.
  results = verify_fixture(os.path.join(FIXTURES, "interpolation_sampling", "manifest.json"))
  assert [r.name for r in results] == ["interpolation_sampling/medium_pass_loop/latents",
                                       "interpolation_sampling/medium_pass_loop/video"]
  for result in results:
    assert result.ok, result.line()


def test_guidance_forms():
  a, b, c = (np.full((2,), v, np.float32) for v in (1.0, 2.0, 4.0))
  np.testing.assert_allclose(guidance.two_way(a, c, 5.0), 6 * a - 5 * c)
  # The reference's defaults (5, 2): -eps_C - 3 eps_B + 5 eps_A.
  np.testing.assert_allclose(guidance.three_way(a, b, c, 5.0, 2.0), -c - 3 * b + 5 * a)


@pytest.fixture(scope="module")
def interpolation():
  config = PIPELINE_PRESETS["tiny-two-level"].interpolation  # two levels: a quarter of the compile
  return build_model(config), nn.unbox(init_params(config, jax.random.key(0)))


def test_interpolation_keeps_the_originals_and_compiles_once(interpolation):
  unet, params = interpolation
  p, t, length = 1, 3, 3
  rng = np.random.default_rng(0)
  frames = rng.normal(size=(p, t, 8, 8, 4)).astype(np.float32)
  dim = unet.config.context_dim
  text = rng.normal(size=(p, length, dim)).astype(np.float32), np.ones((p, length), bool)
  null = unconditional_context(np.ones(dim), p, length)
  options = samplers.SamplerOptions(SchedulerConfig("v_prediction", "trailing", 2))
  run = jax.jit(lambda params, frames, text, null, scale, rng: samplers.interpolate(
      unet, params, frames, text, null, scale, 3, rng, options))
  out = np.asarray(run(params, frames, text, null, 0.5, jax.random.key(1)))
  assert out.shape == (p, 4 * t - 3, 8, 8, 4)
  np.testing.assert_array_equal(out[:, ::4], frames)  # originals at multiples of 4
  assert np.isfinite(out).all() and np.abs(out[:, 1:4]).max() <= 1.0  # generated frames are clamped x0s
  run(params, frames, text, null, 2.0, jax.random.key(2))  # another guidance weight and seed: no recompile
  assert run._cache_size() == 1


def test_bad_sampler_is_named():
  from kvjax.diffusion.loop import denoise
  with pytest.raises(ValueError, match="sampler must be one of"):
    denoise(SchedulerConfig(), None, None, jnp.zeros(1), jax.random.key(0), "euler")


class _StubUNet:
  """A keyframe UNet's interface, a cheap smooth function of its inputs: the sampler's logic alone."""

  def apply(self, variables, unet_in, time, context, mask, **kwargs):
    return jnp.tanh(unet_in[..., :4] + 0.5 * unet_in[..., 4:8] + time[:, None, None, None] / 1000)


def test_base_frames_can_keep_the_key_frame_itself():
  # keep_key_frame: frame 0 comes out as the key frame's latent (DDPM and DDIM); off, frame 0 is generated
  # anew (the reference). Traced: one compile serves both.
  p, length, dim = 2, 3, 8
  rng = np.random.default_rng(0)
  key = rng.uniform(-0.9, 0.9, size=(p, 4, 4, 4)).astype(np.float32)
  text = rng.normal(size=(p, length, dim)).astype(np.float32), np.ones((p, length), bool)
  null = unconditional_context(np.ones(dim), p, length)
  for sampler in ("ddpm", "ddim"):
    options = samplers.SamplerOptions(SchedulerConfig("epsilon", "leading", 4), sampler)
    run = jax.jit(lambda key, keep: samplers.base_frames(_StubUNet(), None, key, text, null, 5.0, 2.0, 10, 20,
                                                         jax.random.key(1), options, keep_key_frame=keep))
    kept, generated = np.asarray(run(key, True)), np.asarray(run(key, False))
    assert run._cache_size() == 1
    np.testing.assert_allclose(kept[:, 0], key, atol=1e-5)
    assert np.abs(generated[:, 0] - key).max() > 0.1
    # The stand-in sees each frame alone (a real UNet's temporal layers see frame 0): only frame 0 changes.
    np.testing.assert_array_equal(kept[:, 1:], generated[:, 1:])
