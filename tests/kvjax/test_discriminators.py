import dataclasses

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import model_configs
from kvjax.models.discriminators import PatchDiscriminator, VideoDiscriminator, build_discriminator, logit_shape
from kvjax.params import abstract_params, build_model, count_params, random_params

PATCH = model_configs.PATCH_DISCRIMINATOR_TINY
VIDEO = model_configs.VIDEO_DISCRIMINATOR_TINY
PRESETS = ["patch-discriminator", "video-discriminator", "patch-discriminator-tiny", "video-discriminator-tiny"]


def _run(config, x, params=None):
  model = build_discriminator(config)
  params = random_params(config) if params is None else params
  return np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(x)))


def _inputs(shape, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_are_registered_and_round_trip(name):
  config = model_configs.get_preset(name)
  assert model_configs.CONFIG_TYPES[config.kind] is model_configs.DiscriminatorConfig
  assert model_configs.DiscriminatorConfig.from_dict(config.to_dict()) == config
  assert name not in model_configs.PUBLISHED_PARAMETER_COUNTS


@pytest.mark.parametrize("name", PRESETS)
def test_every_parameter_has_logical_axes(name):
  tree = flax.traverse_util.flatten_dict(abstract_params(model_configs.get_preset(name)))
  assert tree
  for path, leaf in tree.items():
    assert isinstance(leaf, nn.Partitioned), path
    assert len(leaf.names) == len(leaf.value.shape), path


def test_parameter_counts():
  # 3 -> 64 -> 128 -> 256 (strided) -> 512 (stride 1) -> 1, 4x4 kernels with biases, GroupNorm affine.
  widths = [3, 64, 128, 256, 512, 1]
  convs = sum(16 * a * b + b for a, b in zip(widths, widths[1:]))
  norms = 2 * (128 + 256 + 512)
  assert count_params(abstract_params(model_configs.PATCH_DISCRIMINATOR)) == convs + norms == 2_766_529
  video_convs = sum(48 * a * b + b for a, b in zip(widths, widths[1:]))
  assert count_params(abstract_params(model_configs.VIDEO_DISCRIMINATOR)) == video_convs + norms
  no_norm = dataclasses.replace(model_configs.PATCH_DISCRIMINATOR, norm="none")
  assert count_params(abstract_params(no_norm)) == convs


@pytest.mark.parametrize("shape,expected", [
    ((2, 12, 12, 3), (2, 1, 1, 1)),
    ((1, 16, 24, 3), (1, 2, 4, 1)),  # non-square
    ((3, 32, 20, 3), (3, 6, 3, 1)),
])
def test_patch_shapes(shape, expected):
  assert logit_shape(PATCH, shape) == expected
  out = _run(PATCH, _inputs(shape))
  assert out.shape == expected and out.dtype == np.float32
  assert np.isfinite(out).all()


@pytest.mark.parametrize("shape,expected", [
    ((2, 2, 12, 12, 3), (2, 1, 1, 1, 1)),
    ((1, 4, 16, 24, 3), (1, 2, 2, 4, 1)),
    ((1, 1, 12, 12, 3), (1, 1, 1, 1, 1)),
    ((1, 5, 12, 12, 3), (1, 3, 1, 1, 1)),
])
def test_video_shapes(shape, expected):
  assert logit_shape(VIDEO, shape) == expected
  out = _run(VIDEO, _inputs(shape))
  assert out.shape == expected and out.dtype == np.float32
  assert np.isfinite(out).all()


def test_full_size_video_shapes_abstractly():
  model = build_discriminator(model_configs.VIDEO_DISCRIMINATOR)
  params = abstract_params(model_configs.VIDEO_DISCRIMINATOR)
  for t, expected_t in ((2, 1), (4, 1), (12, 3)):
    x = jax.ShapeDtypeStruct((1, t, 64, 48, 3), jnp.float32)
    out = jax.eval_shape(lambda p, x: model.apply({"params": nn.unbox(p)}, x), params, x)
    assert out.shape == (1, expected_t, 6, 4, 1)
    assert out.shape == logit_shape(model_configs.VIDEO_DISCRIMINATOR, x.shape)


def test_build_model_picks_the_architecture():
  assert type(build_model(PATCH)) is PatchDiscriminator
  assert type(build_model(VIDEO)) is VideoDiscriminator
  with pytest.raises(ValueError, match="remat"):
    build_model(VIDEO, remat="full")


def test_video_discriminator_sees_frame_order_and_patch_does_not():
  clip = _inputs((1, 4, 16, 16, 3), seed=3)
  order = np.array([2, 0, 3, 1])
  video = _run(VIDEO, clip)
  shuffled = _run(VIDEO, clip[:, order])
  assert np.abs(video - shuffled).max() > 1e-3
  assert abs(video.mean() - shuffled.mean()) > 1e-4

  frames = clip[0]
  per_frame = _run(PATCH, frames)
  per_shuffled = _run(PATCH, frames[order])
  np.testing.assert_allclose(per_shuffled, per_frame[order], rtol=1e-5, atol=1e-6)


def test_samples_are_independent():
  # GroupNorm, not BatchNorm: a sample's logits do not depend on the rest of the batch.
  x = _inputs((3, 2, 12, 12, 3), seed=4)
  batch = _run(VIDEO, x)
  np.testing.assert_allclose(_run(VIDEO, x[1:2]), batch[1:2], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_with_float32_params():
  x = jnp.asarray(_inputs((2, 12, 12, 3)))
  params = random_params(PATCH)
  f32 = jax.jit(build_discriminator(PATCH).apply)({"params": params}, x)
  bf16 = jax.jit(build_discriminator(PATCH, dtype=jnp.bfloat16).apply)({"params": params}, x)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(bf16), np.asarray(f32), atol=0.1 * float(jnp.abs(f32).max()) + 1e-2)
  bf16_params = abstract_params(PATCH, jnp.bfloat16)
  assert {leaf.value.dtype for leaf in jax.tree.leaves(bf16_params, is_leaf=lambda l: isinstance(
      l, nn.Partitioned))} == {jnp.dtype(jnp.bfloat16)}


def test_inputs_are_checked():
  params = random_params(PATCH)
  model = build_discriminator(PATCH)
  with pytest.raises(ValueError, match=">= 12"):
    model.apply({"params": params}, jnp.zeros((1, 8, 16, 3)))
  with pytest.raises(ValueError, match="channels"):
    model.apply({"params": params}, jnp.zeros((1, 16, 16, 4)))
  with pytest.raises(ValueError, match=r"\(B, T, H, W, C\)"):
    build_discriminator(VIDEO).apply({"params": random_params(VIDEO)}, jnp.zeros((1, 16, 16, 3)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(architecture="3d"), "architecture"),
    (dict(norm="batch"), "BatchNorm"),
    (dict(temporal_kernel=4), "odd"),
    (dict(temporal_kernel=1), "odd"),
    (dict(channels=40), "groups"),  # 32 groups, widths 80, 160, 320
    (dict(num_layers=0), "num_layers"),
])
def test_config_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    model_configs.DiscriminatorConfig(**kwargs)
  with pytest.raises(ValueError, match="unknown"):
    model_configs.DiscriminatorConfig.from_dict({"groups": 4})


def test_widths_cap_at_eight_times():
  config = model_configs.DiscriminatorConfig(channels=64, num_layers=5)
  assert config.widths == (64, 128, 256, 512, 512, 512)
  assert config.norm_groups == 32 and config.min_spatial_size == 96
