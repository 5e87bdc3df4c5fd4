"""Rematerialisation policies (that they give the same training steps is checked in test_training)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import model_configs
from kvjax.models.unet_layers import REMAT_POLICIES
from kvjax.params import build_model


def test_unknown_remat_policy_is_named():
  model = build_model(model_configs.KEYFRAME_TINY, remat="everything")
  with pytest.raises(ValueError, match="remat must be one of"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 9)), jnp.zeros((1,)), jnp.zeros((1, 2, 48)))


@pytest.mark.parametrize("remat", sorted(REMAT_POLICIES))
def test_every_policy_keeps_the_parameter_tree(remat):
  def shapes(model):
    init = lambda x, t, c: model.init(jax.random.key(0), x, t, c, num_groups=2)
    return jax.eval_shape(init, jnp.zeros((2, 8, 8, 20)), jnp.zeros((2,)), jnp.zeros((2, 2, 20)))

  rematted, plain = shapes(build_model(model_configs.INTERPOLATION_TINY, remat=remat)), shapes(build_model(model_configs.INTERPOLATION_TINY))
  assert jax.tree.structure(rematted) == jax.tree.structure(plain)
  assert jax.tree.leaves(rematted) == jax.tree.leaves(plain)


def test_remat_applies_to_unets_and_movqs_only():
  with pytest.raises(ValueError, match="UNets and MoVQs"):
    build_model(model_configs.T5_ENCODER_TINY, remat="levels")


# The MoVQ GAN's one-device runs in test_movq_training.py are rematerialised and equal the sharded ones.
@pytest.mark.slow
def test_movq_remat_keeps_the_parameter_tree_and_the_output():
  images = jnp.linspace(-1, 1, 2 * 16 * 16 * 3).reshape(2, 16, 16, 3)
  def run(remat):
    model = build_model(model_configs.VIDEO_MOVQ_TINY, remat=remat)
    params = model.init(jax.random.key(0), images, 2)["params"]
    return params, jax.grad(lambda p: jnp.sum(model.apply({"params": p}, images, 2) ** 2))(params)
  (p_remat, g_remat), (p_plain, g_plain) = run("levels"), run("none")
  assert jax.tree.structure(p_remat) == jax.tree.structure(p_plain)
  for a, b in zip(jax.tree.leaves(g_remat), jax.tree.leaves(g_plain)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
