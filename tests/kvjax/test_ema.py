"""The weights' EMA forgets the initial weights within the first steps (diffusers' warmed-up decay), so the
EMA of a short run is the trained model, not a blend with its random init."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kvjax.training.optimizer import OptimizerConfig, ema_decay_at
from kvjax.training.train_state import apply_gradients, create_state


def test_the_decay_warms_up_then_holds():
  cfg = OptimizerConfig(ema_decay=0.999)
  decays = np.asarray(ema_decay_at(cfg, jnp.arange(20_000)))
  np.testing.assert_allclose(decays[:3], [1 / 10, 2 / 11, 3 / 12], rtol=1e-6)
  assert np.all(np.diff(decays) >= 0) and decays[-1] == np.float32(0.999)


def test_a_short_run_exports_its_trained_weights_not_its_init():
  # One update moves w from 0 to 1, then it stays: after 600 updates at decay 0.999 a constant decay would
  # keep 0.999^600 = 55% of the init in the EMA; warmed up, none of it is left.
  cfg = OptimizerConfig(ema_decay=0.999)
  sgd = optax.sgd(1.0)
  state = create_state({"w": jnp.zeros(())}, sgd, ema=True)
  update = jax.jit(lambda state, g: apply_gradients(state, {"w": g}, sgd, cfg))
  state = update(state, jnp.float32(-1.0))
  for _ in range(599):
    state = update(state, jnp.float32(0.0))
  assert float(state.params["w"]) == 1.0
  assert float(state.ema_params["w"]) > 1 - 1e-6
