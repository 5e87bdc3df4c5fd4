"""The reference DDPM step (spec §7.4) and forward noising (§7.5), as pure functions.

All arithmetic is float32 whatever the dtype of the model output, as in the reference's scheduler.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kvjax.diffusion.schedule import Schedule, SchedulerConfig


def _per_sample(x: jax.Array, value: jax.Array) -> jax.Array:
  """Broadcasts a scalar or per-sample (N,) value against x (N, ...)."""
  value = jnp.asarray(value, jnp.float32)
  return value.reshape(value.shape + (1,) * (x.ndim - value.ndim))


def predict_original(config: SchedulerConfig, alpha_bar: jax.Array, sample: jax.Array,
                     model_output: jax.Array) -> jax.Array:
  """x0 from the model output: epsilon -> (x - sqrt(1 - abar) eps)/sqrt(abar); v -> sqrt(abar) x - sqrt(1 - abar) v."""
  a, b = jnp.sqrt(alpha_bar), jnp.sqrt(1 - alpha_bar)
  if config.prediction_type == "epsilon":
    return (sample - b * model_output) / a
  return a * sample - b * model_output


def epsilon_of(alpha_bar: jax.Array, sample: jax.Array, x0: jax.Array) -> jax.Array:
  """The epsilon whose x0 (predict_original) is `x0`: (x - sqrt(abar) x0) / sqrt(1 - abar)."""
  return (sample - jnp.sqrt(alpha_bar) * x0) / jnp.sqrt(1 - alpha_bar)


def dynamic_threshold(config: SchedulerConfig, x0: jax.Array) -> jax.Array:
  """Per sample: s = clamp(quantile(|x0|, ratio), 1, sample_max_value); x0 <- clamp(x0, -s, s) / s."""
  if config.sample_max_value <= 1.0:  # s is then exactly 1: skip the quantile's sort
    return jnp.clip(x0, -1.0, 1.0)
  flat = jnp.abs(x0.reshape(x0.shape[0], -1))
  s = jnp.clip(jnp.quantile(flat, config.dynamic_thresholding_ratio, axis=1), 1.0, config.sample_max_value)
  s = _per_sample(x0, s)
  return jnp.clip(x0, -s, s) / s


def clean_prediction(config: SchedulerConfig, alpha_bar, sample, model_output) -> jax.Array:
  """x0 from the model output, thresholded (or clipped) as the reference's scheduler does."""
  x0 = predict_original(config, alpha_bar, sample, model_output)
  if config.thresholding:
    return dynamic_threshold(config, x0)
  if config.clip_sample:
    return jnp.clip(x0, -config.clip_sample_range, config.clip_sample_range)
  return x0


def ddpm_step(config: SchedulerConfig, schedule: Schedule, index: jax.Array, sample: jax.Array,
              model_output: jax.Array, noise: jax.Array) -> jax.Array:
  """x_t -> x_prev at loop step `index` (traced), with the posterior std ("fixed_small_log") times `noise`.

  No noise is added at t = 0 (the last epsilon step); the last v step (t = 99 -> -1) adds 1e-10 noise as
  the reference does.
  """
  sample, model_output = sample.astype(jnp.float32), model_output.astype(jnp.float32)
  t, prev = schedule.timesteps[index], schedule.prev_timesteps[index]
  alpha_bar, alpha_bar_prev = schedule.alpha_bar(t), schedule.alpha_bar(prev)
  beta_bar, beta_bar_prev = 1 - alpha_bar, 1 - alpha_bar_prev
  alpha = alpha_bar / alpha_bar_prev
  beta = 1 - alpha
  x0 = clean_prediction(config, alpha_bar, sample, model_output)
  mean = (jnp.sqrt(alpha_bar_prev) * beta / beta_bar) * x0 + (jnp.sqrt(alpha) * beta_bar_prev / beta_bar) * sample
  std = jnp.exp(0.5 * jnp.log(jnp.maximum(beta_bar_prev / beta_bar * beta, 1e-20)))
  return mean + jnp.where(t > 0, std, 0.0) * noise.astype(jnp.float32)


def add_noise(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with abar cast to x0's dtype; t scalar or per sample."""
  alpha_bar = _per_sample(x0, schedule.alphas_cumprod[jnp.asarray(t)]).astype(x0.dtype)
  return jnp.sqrt(alpha_bar) * x0 + jnp.sqrt(1 - alpha_bar) * noise


def velocity(schedule: Schedule, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """The v-prediction target sqrt(abar_t) noise - sqrt(1 - abar_t) x0 (the inverse of `predict_original`)."""
  alpha_bar = _per_sample(x0, schedule.alphas_cumprod[jnp.asarray(t)]).astype(x0.dtype)
  return jnp.sqrt(alpha_bar) * noise - jnp.sqrt(1 - alpha_bar) * x0
