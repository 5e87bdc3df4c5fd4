"""The attention switch: jax.nn.dot_product_attention's path equals ours (the reference's arithmetic) on CPU,
in the function and inside the models that choose it (`attention_implementation`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import model_configs
from kvjax.layers.attention import TemporalAttention, dot_product_attention
from kvjax.params import build_model, random_params


def _qkv(seed, b=2, tq=5, tk=7, h=3, d=8):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (b, tq, h, d)), jax.random.normal(keys[1], (b, tk, h, d)),
          jax.random.normal(keys[2], (b, tk, h, d)))


def test_the_jax_path_equals_ours_with_masks_and_biases():
  q, k, v = _qkv(0)
  mask = jnp.array([[True] * 4 + [False] * 3, [True] * 7])
  bias = jax.random.normal(jax.random.key(1), (1, 3, 5, 7))
  for kwargs in ({}, {"mask": mask}, {"bias": bias, "scale": 1.0}, {"mask": mask, "bias": bias}):
    ours = dot_product_attention(q, k, v, **kwargs)
    theirs = dot_product_attention(q, k, v, implementation="jax", **kwargs)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-6)


def test_a_fully_masked_row_stays_finite_on_both_paths():
  q, k, v = _qkv(2)
  mask = jnp.zeros((2, 7), bool)
  for implementation in ("xla", "jax"):
    out = dot_product_attention(q, k, v, mask=mask, implementation=implementation)
    np.testing.assert_allclose(out, jnp.broadcast_to(v.mean(axis=1, keepdims=True), out.shape), rtol=1e-5, atol=1e-6)


def test_temporal_attention_takes_the_switch_from_its_model():
  x = jax.random.normal(jax.random.key(3), (2, 4, 6, 16))  # (b, frames, positions, channels)
  module = TemporalAttention(16, 8)
  params = module.init(jax.random.key(4), x)["params"]
  params = jax.tree.map(lambda a: jax.random.normal(jax.random.key(5), a.shape), params)  # no zero output layer
  ours = module.apply({"params": params}, x)

  class Model(TemporalAttention):
    attention_implementation: str = "jax"

  theirs = Model(16, 8).apply({"params": params}, x)
  np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [model_configs.T5_ENCODER_TINY, model_configs.IMAGE_MOVQ_TINY], ids=["t5", "movq"])
def test_models_give_the_same_outputs_with_either_implementation(config):
  params = random_params(config, 0)
  if isinstance(config, model_configs.T5EncoderConfig):
    ids = jnp.array([[5, 9, 3, 1, 0, 0], [7, 1, 0, 0, 0, 0]])
    run = lambda model: model.apply({"params": params}, ids, ids > 0)
  else:
    images = jax.random.uniform(jax.random.key(0), (1, 16, 16, 3), minval=-1, maxval=1)
    run = lambda model: model.apply({"params": params}, images)
  ours, theirs = (run(build_model(config, attention=name)) for name in ("xla", "jax"))
  for a, b in zip(jax.tree.leaves(theirs), jax.tree.leaves(ours)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_an_unknown_implementation_is_named():
  with pytest.raises(ValueError, match="attention implementation must be one of xla, jax, cudnn"):
    build_model(model_configs.T5_ENCODER_TINY, attention="flash")
