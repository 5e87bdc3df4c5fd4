"""Pieces shared by the training objectives: conditioning dropout, noise augmentation of condition frames,
and pinning per-sample values to the batch layout."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from kvjax.diffusion.ddpm import add_noise
from kvjax.diffusion.schedule import Schedule
from kvjax.text.conditioning import unconditional_context

NOISE_KINDS = {"uniform": jax.random.uniform, "gaussian": jax.random.normal}


def batch_pinning(activation_sharding) -> Callable[[jax.Array], jax.Array]:
  """Pins an array to `activation_sharding` (a NamedSharding of the leading axis), or does nothing.

  Random draws must be pinned: without it, weight shardings propagate into the channels of the draws,
  and on meshes with a replicated axis XLA's CPU backend then draws different numbers (seen with
  data=4,tensor=2: a 1% different loss; tensor=8 or fsdp=8 alone agree).
  """
  if activation_sharding is None:
    return lambda x: x
  return lambda x: jax.lax.with_sharding_constraint(x, activation_sharding)


def where_sample(keep: jax.Array, a, b) -> jax.Array:
  """Per sample of the leading axis: a where `keep`, else b."""
  a = jnp.asarray(a)
  return jnp.where(keep.reshape(keep.shape + (1,) * (a.ndim - 1)), a, b)


def noise_augment(schedule: Schedule, frames: jax.Array, level: jax.Array, rng: jax.Array, kind: str,
                  pin=lambda x: x) -> jax.Array:
  """Forward-noises condition frames (B, ...) to timestep `level` (B,) with noise of `kind`."""
  if kind not in NOISE_KINDS:
    raise ValueError(f"augmentation noise must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
  return add_noise(schedule, frames, pin(NOISE_KINDS[kind](rng, frames.shape, frames.dtype)), level)


def drop_text(context: jax.Array, mask: jax.Array, null_embedding, dropped: jax.Array):
  """Replaces the context of the `dropped` samples by the unconditional one (the null embedding)."""
  null_context, null_mask = unconditional_context(null_embedding, context.shape[0], context.shape[1], context.dtype)
  return where_sample(dropped, null_context, context), where_sample(dropped, null_mask, mask.astype(bool))


def draw_timesteps(high_noise_fraction: float, high_noise_start: int, rng, n: int, steps: int) -> jax.Array:
  """(n,) training timesteps: uniform over [0, steps), `high_noise_fraction` of them over [high_noise_start,
  steps). (The high draws fold in their own keys: with the fraction 0 the draws are the uniform ones.)"""
  k_high, k_which = jax.random.split(jax.random.fold_in(rng, 1))
  high = jax.random.bernoulli(k_which, high_noise_fraction, (n,))
  return jnp.where(high, jax.random.randint(k_high, (n,), high_noise_start, steps),
                   jax.random.randint(rng, (n,), 0, steps))


def check_high_noise(owner: str, high_noise_fraction: float, high_noise_start: int, steps: int) -> None:
  """The draw_timesteps settings of a config named `owner`: a fraction in [0, 1], a start in [0, steps)."""
  if not 0 <= high_noise_fraction <= 1 or not 0 <= high_noise_start < steps:
    raise ValueError(f"{owner}: high_noise_fraction must be in [0, 1] (got {high_noise_fraction}) and "
                     f"high_noise_start in [0, {steps}) (got {high_noise_start})")
