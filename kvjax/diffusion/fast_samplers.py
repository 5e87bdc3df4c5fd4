"""Faster samplers over the reference schedule. NOT the reference: it samples with DDPM (`ddpm.py`).

DDIM (eta = 0) and DPM-Solver++ (2M, midpoint) reach comparable quality in far fewer steps. Both use the
same schedule, prediction type and x0 thresholding as the reference, so they can replace its DDPM step
with a smaller `num_inference_steps`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kvjax.diffusion.ddpm import clean_prediction
from kvjax.diffusion.schedule import Schedule, SchedulerConfig

# DPM-Solver works in log-SNR, which is -inf where alpha_bar = 0 (the zero-terminal-SNR end of the
# schedule); that point is moved to 2^-24, as diffusers does.
_MIN_ALPHA_BAR = 2.0 ** -24


def ddim_step(config: SchedulerConfig, schedule: Schedule, index: jax.Array, sample: jax.Array,
              model_output: jax.Array) -> jax.Array:
  """Deterministic DDIM: x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps.

  x0 is thresholded; eps is the model's own (not re-derived from the thresholded x0), as in diffusers.
  """
  sample, model_output = sample.astype(jnp.float32), model_output.astype(jnp.float32)
  alpha_bar = schedule.alpha_bar(schedule.timesteps[index])
  alpha_bar_prev = schedule.alpha_bar(schedule.prev_timesteps[index])
  x0 = clean_prediction(config, alpha_bar, sample, model_output)
  if config.prediction_type == "epsilon":
    eps = model_output
  else:
    eps = jnp.sqrt(alpha_bar) * model_output + jnp.sqrt(1 - alpha_bar) * sample
  return jnp.sqrt(alpha_bar_prev) * x0 + jnp.sqrt(1 - alpha_bar_prev) * eps


def _alpha_sigma_lambda(schedule: Schedule, t):
  alpha_bar = jnp.maximum(schedule.alpha_bar(t), _MIN_ALPHA_BAR)
  alpha, sigma = jnp.sqrt(alpha_bar), jnp.sqrt(1 - alpha_bar)
  return alpha, sigma, jnp.log(alpha) - jnp.log(sigma)


def dpm_solver_pp_step(config: SchedulerConfig, schedule: Schedule, index: jax.Array, sample: jax.Array,
                       model_output: jax.Array, previous_x0: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One DPM-Solver++(2M) step; returns (x_prev, x0 of this step) and takes the previous step's x0.

  First order at the first step and at the last, which lands on the clean sample (sigma = 0).
  """
  sample, model_output = sample.astype(jnp.float32), model_output.astype(jnp.float32)
  t, prev = schedule.timesteps[index], schedule.prev_timesteps[index]
  x0 = clean_prediction(config, schedule.alpha_bar(t), sample, model_output)
  _, sigma_s, lambda_s = _alpha_sigma_lambda(schedule, t)
  alpha_t, sigma_t, lambda_t = _alpha_sigma_lambda(schedule, prev)
  earlier = schedule.timesteps[jnp.maximum(index - 1, 0)]
  _, _, lambda_earlier = _alpha_sigma_lambda(schedule, earlier)
  h = lambda_t - lambda_s
  decay = jnp.expm1(-h)  # e^{-h} - 1
  second_order = (index > 0) & (prev >= 0)
  ratio = (lambda_s - lambda_earlier) / h
  correction = jnp.where(second_order, 0.5 * (x0 - previous_x0) / jnp.where(second_order, ratio, 1.0), 0.0)
  stepped = (sigma_t / sigma_s) * sample - alpha_t * decay * (x0 + correction)
  return jnp.where(prev >= 0, stepped, x0), x0
