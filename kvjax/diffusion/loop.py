"""The denoising loop, compiled once per shape: `lax.fori_loop` over the steps of a schedule.

`predict(x, t)` returns the guided model output for the current sample. Guidance weights and other
conditioning enter through its closure as traced values, so changing them does not recompile.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from kvjax.diffusion import ddpm, fast_samplers
from kvjax.diffusion.schedule import Schedule, SchedulerConfig

# "ddpm" is the reference sampler; the others are faster options that are not the reference.
SAMPLERS = ("ddpm", "ddim", "dpm_solver_pp")


def denoise(config: SchedulerConfig, schedule: Schedule, predict: Callable[[jax.Array, jax.Array], jax.Array],
            x: jax.Array, rng: jax.Array, sampler: str = "ddpm", step_noise: jax.Array | None = None,
            on_step: Callable[[int, int], None] | None = None) -> jax.Array:
  """Runs every step of `schedule` from the noise `x`.

  DDPM draws its step noise from `rng` (folded with the step number), or takes it from `step_noise`
  (num_steps, *x.shape) to replay another implementation's noise exactly. `on_step(done, total)` is
  called on the host after each step (a progress bar), from inside the compiled loop.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")

  total = schedule.num_steps

  def body(index, carry):
    x, previous_x0 = carry
    output = predict(x, schedule.timesteps[index])
    if on_step is not None:
      jax.debug.callback(lambda i: on_step(int(i) + 1, total), index)
    if sampler == "ddpm":
      if step_noise is None:
        noise = jax.random.normal(jax.random.fold_in(rng, index), x.shape, jnp.float32)
      else:
        noise = step_noise[index]
      return ddpm.ddpm_step(config, schedule, index, x, output, noise), previous_x0
    if sampler == "ddim":
      return fast_samplers.ddim_step(config, schedule, index, x, output), previous_x0
    return fast_samplers.dpm_solver_pp_step(config, schedule, index, x, output, previous_x0)

  x = x.astype(jnp.float32)
  if step_noise is not None:
    step_noise = jnp.asarray(step_noise, jnp.float32)
  x, _ = jax.lax.fori_loop(0, schedule.num_steps, body, (x, jnp.zeros_like(x)))
  return x
