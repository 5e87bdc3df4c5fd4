"""GAN objectives for a MoVQ-GAN trainer (the taming-transformers / MoVQGAN recipe, with magvit's regularisers).

Pure functions of arrays; every result is a float32 scalar whatever the dtype of the logits. Weights
(disc_weight, R1's gamma, LeCam's weight) are the caller's: none is applied here.

Hinge scale: `hinge_discriminator_loss` is mean(relu(1 - real)) + mean(relu(1 + fake)), the sum of the two
hinges, which is twice taming's `hinge_d_loss` (0.5 * (...)). A discriminator weight tuned for taming's
loss is halved to match; with Adam the overall scale of the discriminator's loss hardly matters.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

_f32 = lambda x: jnp.asarray(x, jnp.float32)


def hinge_discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """mean(relu(1 - D(real))) + mean(relu(1 + D(fake))): zero once real logits are >= 1 and fake <= -1."""
  return jnp.mean(jax.nn.relu(1.0 - _f32(logits_real))) + jnp.mean(jax.nn.relu(1.0 + _f32(logits_fake)))


def hinge_generator_loss(logits_fake: jax.Array) -> jax.Array:
  """-mean(D(fake)), the generator's side of the hinge GAN (taming's g_loss)."""
  return -jnp.mean(_f32(logits_fake))


def r1_penalty(discriminator_fn: Callable[[jax.Array], jax.Array], real: jax.Array) -> jax.Array:
  """R1 (Mescheder et al. 2018): the mean over samples of |d sum(D(real)) / d real|^2.

  `discriminator_fn` maps a batch (leading axis: samples) to its logits, e.g. `lambda x: model.apply(
  {"params": params}, x)`; differentiating this penalty w.r.t. those params is a double backward. Summing the
  logits gives each sample the gradient of its own logits, since samples do not interact (GroupNorm, not
  BatchNorm). StyleGAN's weighting is gamma / 2 times this.
  """
  grad = jax.grad(lambda x: jnp.sum(_f32(discriminator_fn(x))))(real)
  grad = _f32(grad)
  return jnp.mean(jnp.sum(jnp.square(grad).reshape(grad.shape[0], -1), axis=1))


def lecam_regularizer(logits_real: jax.Array, logits_fake: jax.Array, ema_real: jax.Array,
                      ema_fake: jax.Array) -> jax.Array:
  """LeCam (Tseng et al. 2021, as in magvit): mean(relu(D(real) - ema_fake)^2) + mean(relu(ema_real - D(fake))^2).

  `ema_real` / `ema_fake` are moving averages of the mean real and fake logits (`lecam_ema_update`); they
  are constants here (gradients stopped).
  """
  ema_real, ema_fake = jax.lax.stop_gradient(_f32(ema_real)), jax.lax.stop_gradient(_f32(ema_fake))
  return (jnp.mean(jnp.square(jax.nn.relu(_f32(logits_real) - ema_fake)))
          + jnp.mean(jnp.square(jax.nn.relu(ema_real - _f32(logits_fake)))))


def lecam_ema_update(ema: Any, value: Any, decay: float = 0.999) -> Any:
  """decay * ema + (1 - decay) * mean(value), gradients stopped; float32.

  `ema` and `value` are matching pytrees, so both averages update at once:
  `ema_real, ema_fake = lecam_ema_update((ema_real, ema_fake), (logits_real, logits_fake))`. magvit starts
  the averages at 0 and uses decay 0.999.
  """
  def one(average, logits):
    mean = jax.lax.stop_gradient(jnp.mean(_f32(logits)))
    return decay * _f32(average) + (1.0 - decay) * mean
  return jax.tree.map(one, ema, value)


def _global_norm(tree: Any) -> jax.Array:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError("adaptive_weight needs at least one gradient array")
  return jnp.sqrt(sum(jnp.sum(jnp.square(_f32(leaf))) for leaf in leaves))


def adaptive_weight(reconstruction_grad: Any, generator_grad: Any, max_weight: float = 1e4,
                    eps: float = 1e-4) -> jax.Array:
  """taming's calculate_adaptive_weight: clip(|g_rec| / (|g_gan| + eps), 0, max_weight), gradients stopped.

  The two arguments are the gradients of the reconstruction loss and of the generator's GAN loss w.r.t. the
  same parameters (taming: the decoder's last layer weight), as arrays or matching pytrees; the norms are
  global L2 norms over all leaves. Multiply the result by the discriminator weight.
  """
  rec = _global_norm(jax.lax.stop_gradient(reconstruction_grad))
  gen = _global_norm(jax.lax.stop_gradient(generator_grad))
  return jax.lax.stop_gradient(jnp.clip(rec / (gen + eps), 0.0, max_weight))


def discriminator_factor(step: jax.Array | int, start_step: jax.Array | int) -> jax.Array:
  """1.0 once step >= start_step, else 0.0 (taming's adopt_weight); `step` may be traced."""
  return jnp.where(jnp.asarray(step) >= jnp.asarray(start_step), 1.0, 0.0).astype(jnp.float32)
