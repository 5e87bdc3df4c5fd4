"""The denoising loop, compiled once per shape: `lax.fori_loop` over the steps of a schedule.

`predict(x, t)` returns the guided model output for the current sample. Guidance weights and other
conditioning enter through its closure as traced values, so changing them does not recompile.

With feature caching (kvjax.diffusion.feature_cache) the loop carries the UNet's deep features, and
`predict(x, t, deep, True)` returns (output, deep features): on a full step it is called with deep None and
keeps the features, on a cached step with the kept ones. One `lax.cond` per step picks the two from the
static schedule, inside the compiled loop: no host round trip; every guidance branch (one UNet batch) follows
the same schedule.
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
            on_step: Callable[[int, int], None] | None = None,
            full_steps: tuple[bool, ...] | None = None) -> jax.Array:
  """Runs every step of `schedule` from the noise `x`.

  DDPM draws its step noise from `rng` (folded with the step number), or takes it from `step_noise`
  (num_steps, *x.shape) to replay another implementation's noise exactly. `on_step(done, total)` is
  called on the host after each step (a progress bar), from inside the compiled loop. `full_steps` (one
  bool per step, the first True; feature_cache.full_steps): where the UNet runs whole; None: every step, with
  today's `predict(x, t)`.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")

  total = schedule.num_steps
  if full_steps is not None and (len(full_steps) != total or not full_steps[0]):
    raise ValueError(f"full_steps must hold {total} values, the first True (it fills the cache), got {full_steps}")

  def body(index, carry):
    x, previous_x0, *deep = carry
    t = schedule.timesteps[index]
    if full_steps is None:
      output = predict(x, t)
    else:
      output, deep[0] = jax.lax.cond(jnp.asarray(full_steps)[index], lambda x, deep: predict(x, t, None, True),
                                     lambda x, deep: predict(x, t, deep, True), x, deep[0])
    if on_step is not None:
      jax.debug.callback(lambda i: on_step(int(i) + 1, total), index)
    if sampler == "ddpm":
      if step_noise is None:
        noise = jax.random.normal(jax.random.fold_in(rng, index), x.shape, jnp.float32)
      else:
        noise = step_noise[index]
      return ddpm.ddpm_step(config, schedule, index, x, output, noise), previous_x0, *deep
    if sampler == "ddim":
      return fast_samplers.ddim_step(config, schedule, index, x, output), previous_x0, *deep
    return *fast_samplers.dpm_solver_pp_step(config, schedule, index, x, output, previous_x0), *deep

  x = x.astype(jnp.float32)
  if step_noise is not None:
    step_noise = jnp.asarray(step_noise, jnp.float32)
  carry = (x, jnp.zeros_like(x))
  if full_steps is not None:  # the deep features' shape, from a full step traced abstractly; step 0 fills them
    deep = jax.eval_shape(lambda x: predict(x, schedule.timesteps[0], None, True)[1], x)
    carry += (jnp.zeros(deep.shape, deep.dtype),)
  return jax.lax.fori_loop(0, schedule.num_steps, body, carry)[0]
