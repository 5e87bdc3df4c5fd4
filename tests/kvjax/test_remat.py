"""Rematerialisation changes memory, not results: same loss and gradients with every policy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import configs
from kvjax.params import build_model, random_params


@pytest.mark.parametrize("config,kwargs", [
    (configs.KEYFRAME_TINY, dict(frame_index=jnp.tile(jnp.arange(2.0), 2), num_frames=2, input_layer="video")),
    (configs.INTERPOLATION_TINY, dict(num_groups=2, temporal_mask=jnp.array([1.0, 1.0, 0.0, 1.0]))),
], ids=["keyframe", "interpolation"])
def test_remat_levels_gives_the_same_gradients(config, kwargs):
  params = random_params(config, 1)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 8, 8, config.num_channels)), jnp.float32)
  context = jnp.asarray(rng.normal(size=(4, 3, config.context_dim)), jnp.float32)

  def loss_and_grads(remat):
    model = build_model(config, remat=remat)
    loss = lambda p: jnp.mean(model.apply({"params": p}, x, jnp.full((4,), 300.0), context, **kwargs) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  (loss, grads), (remat_loss, remat_grads) = loss_and_grads("none"), loss_and_grads("levels")
  np.testing.assert_allclose(float(remat_loss), float(loss), rtol=1e-6)
  flat, remat_flat = (jnp.concatenate([g.ravel() for g in jax.tree.leaves(t)]) for t in (grads, remat_grads))
  assert float(jnp.linalg.norm(remat_flat - flat) / jnp.linalg.norm(flat)) < 1e-5


def test_unknown_remat_policy_is_named():
  model = build_model(configs.KEYFRAME_TINY, remat="everything")
  with pytest.raises(ValueError, match="remat must be one of"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 9)), jnp.zeros((1,)), jnp.zeros((1, 2, 48)))
