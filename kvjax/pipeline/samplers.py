"""The reference's three samplers (spec §7.6) as pure functions of (params, inputs, rng).

Each builds the guidance batch the way the reference lays it out, runs the compiled denoising loop and
returns channels-last latents. A leading prompt axis P generalises the reference's single prompt: every
branch holds P items (or P clips of frames), in prompt order.

`text` and `null` are (context (P, L, D), mask (P, L) bool) pairs: the projected prompt and the
unconditional context built from the null embedding (same L).

`context_length` (optional, traced) is the reference's context length L when the contexts are zero-padded
beyond it (the pipeline pads every prompt to the tokenizer length, so that one program serves all).

`noise` (optional) replaces the random draws with given arrays, channels-last: `initial_noise` (the
starting sample), `step_noise` (num_steps, ...) for the DDPM steps and, for the base frames,
`augmentation_noise` (the uniform noise added to the key frame). The parity fixtures replay the
reference's noise this way.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from kvjax.diffusion import ddpm, guidance
from kvjax.diffusion.loop import denoise
from kvjax.diffusion.schedule import INTERPOLATION_SCHEDULER, KEYFRAME_SCHEDULER, SchedulerConfig, make_schedule
from kvjax.models.interpolation_unet import FRAMES_PER_GROUP
from kvjax.sharding import constrain_batch

LATENT_CHANNELS = 4
NUM_BASE_FRAMES = 12


@dataclasses.dataclass(frozen=True)
class SamplerOptions:
  """Static choices of a sampling stage (each value compiles its own function)."""

  scheduler: SchedulerConfig = KEYFRAME_SCHEDULER
  sampler: str = "ddpm"  # the reference; "ddim" / "dpm_solver_pp" are faster, not the reference
  on_step: Callable[[int, int], None] | None = None  # progress: (steps done, total), on the host
  # Where the UNet's batch (guidance branches x prompts x frames) lives on a mesh: split over its
  # data-parallel axes (kvjax.sharding.batch_sharding); None leaves placement to XLA (one device).
  batch_sharding: jax.sharding.NamedSharding | None = None
  # Feature caching (kvjax.diffusion.feature_cache.full_steps): per step, True where the UNet runs whole;
  # None runs it whole at every step (the reference).
  full_steps: tuple[bool, ...] | None = None


def _noise(noise, name: str, draw):
  """`noise[name]` when given (replaying recorded noise), else a fresh draw."""
  return draw() if noise is None or name not in noise else jnp.asarray(noise[name], jnp.float32)


def _stack(*trees):
  return jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)


def _on_batch(options: SamplerOptions, *arrays):
  """`arrays` (batch-major) constrained to the batch sharding of `options`, where it has one. The UNets'
  outputs too: left to propagation, they come out split over channels by the output layer's tensor-parallel
  kernel, and the guidance slices of such an array gave other values than one device
  (bench/mesh_parity.py)."""
  return tuple(constrain_batch(a, options.batch_sharding) for a in arrays)


def _unet(options: SamplerOptions, apply, deep, keep: bool):
  """`apply(**cache arguments)`, the UNet on the whole guidance batch, and its deep features: (output, deep)
  when feature caching (`keep`), (output, None) otherwise."""
  if not keep:
    return apply(), None
  out, deep = apply(deep_features=None if deep is None else _on_batch(options, deep)[0], keep_deep_features=True)
  return out, _on_batch(options, deep)[0]


def _cached(output, deep, keep: bool):
  """What `predict` returns to the loop: the guided output, with the deep features when caching."""
  return (output, deep) if keep else output


def _denoise(options: SamplerOptions, schedule, predict, x, step_rng, noise):
  return denoise(options.scheduler, schedule, predict, x, step_rng, options.sampler,
                 None if noise is None else noise.get("step_noise"), options.on_step, options.full_steps)


def first_frame(unet, params, text, null, guidance_scale, rng, latent_size: tuple[int, int],
                options: SamplerOptions = SamplerOptions(), noise=None, context_length=None) -> jax.Array:
  """The key frame, keyframe UNet in image mode: batch [text; unconditional], two-way guidance on eps.

  Returns (P, h, w, 4) with (h, w) = `latent_size` (the reference uses H/4 x W/4: twice the video size).
  """
  context, mask = _stack(text, null)
  p = text[0].shape[0]
  schedule = make_schedule(options.scheduler)
  start_rng, step_rng = jax.random.split(rng)
  x = _noise(noise, "initial_noise",
             lambda: jax.random.normal(start_rng, (p, *latent_size, LATENT_CHANNELS), jnp.float32))
  no_condition = jnp.zeros((2 * p, *latent_size, LATENT_CHANNELS + 1), jnp.float32)  # condition and mask

  def predict(x, t, deep=None, keep=False):
    unet_in = jnp.concatenate([jnp.concatenate([x, x]), no_condition], axis=-1)
    time = jnp.full((2 * p,), t, jnp.float32)
    eps, deep = _unet(options, lambda **cache: unet.apply(
        {"params": params}, *_on_batch(options, unet_in, time, context, mask), input_layer="image",
        context_length=context_length, **cache), deep, keep)
    eps, = _on_batch(options, eps)
    return _cached(guidance.two_way(eps[:p], eps[p:], guidance_scale), deep, keep)

  return _denoise(options, schedule, predict, x, step_rng, noise)


def base_frames(unet, params, key_frame_latent, text, null, text_scale, image_scale, motion_score,
                noise_level, rng, options: SamplerOptions = SamplerOptions(), noise=None,
                context_length=None, keep_key_frame=False, held_latents=None) -> jax.Array:
  """12 frames conditioned on the key frame, keyframe UNet in video mode; three-way guidance.

  `key_frame_latent` (P, h, w, 4) is noise-augmented at timestep `noise_level` with uniform noise (the
  reference's quirk, spec §7.5) and placed on frame 0's condition channels with a mask of 1; the other
  frames get zeros. Batch: [A text + condition; B null + condition; C null, no condition] x P x 12.
  `motion_score` and `noise_level` are traced (changing them does not recompile). Returns (P, 12, h, w, 4).

  The reference generates frame 0 anew (near the key frame, not it). `keep_key_frame` (traced bool) holds
  it at the key frame instead: at every step frame 0's epsilon is the one whose x0 is the key frame, so
  the sampler walks frame 0 down the key frame's own noising path and the UNet's temporal layers denoise
  the other frames around it. Given as a traced int K with `held_latents` (P, 12, h, w, 4), it holds the
  first K frames so, each at its own latent there (a long video's overlap of base frames between windows).
  """
  p, h, w, _ = key_frame_latent.shape
  n = NUM_BASE_FRAMES
  schedule = make_schedule(options.scheduler)
  aug_rng, start_rng, step_rng = jax.random.split(rng, 3)
  uniform = _noise(noise, "augmentation_noise",
                   lambda: jax.random.uniform(aug_rng, key_frame_latent.shape, jnp.float32))
  augmented = ddpm.add_noise(schedule, key_frame_latent.astype(jnp.float32), uniform, noise_level)
  condition = jnp.zeros((p, n, h, w, LATENT_CHANNELS + 1), jnp.float32)
  condition = condition.at[:, 0, ..., :LATENT_CHANNELS].set(augmented).at[:, 0, ..., LATENT_CHANNELS].set(1.0)
  condition = condition.reshape(p * n, h, w, LATENT_CHANNELS + 1)
  conditions = jnp.concatenate([condition, condition, jnp.zeros_like(condition)])
  per_frame = lambda tree: jax.tree.map(lambda a: jnp.repeat(a, n, axis=0), tree)
  context, mask = _stack(per_frame(text), per_frame(null), per_frame(null))
  batch = 3 * p * n
  frame_index = jnp.tile(jnp.arange(n, dtype=jnp.float32), 3 * p)
  noise_aug_time = jnp.full((batch,), noise_level, jnp.int32)
  motion = jnp.full((batch,), motion_score, jnp.int32)
  x = _noise(noise, "initial_noise",
             lambda: jax.random.normal(start_rng, (p * n, h, w, LATENT_CHANNELS), jnp.float32))
  if held_latents is None:  # frame 0 alone can be held, at the key frame
    key_frames = jnp.repeat(key_frame_latent.astype(jnp.float32), n, axis=0)
  else:
    key_frames = held_latents.astype(jnp.float32).reshape(p * n, h, w, LATENT_CHANNELS)
  key_frames, = _on_batch(options, key_frames)  # (P 12, ...)
  kept = (jnp.arange(p * n) % n < jnp.asarray(keep_key_frame, jnp.int32))[:, None, None, None]

  def predict(x, t, deep=None, keep=False):
    unet_in = jnp.concatenate([jnp.concatenate([x, x, x]), conditions], axis=-1)
    time = jnp.full((batch,), t, jnp.float32)
    eps, deep = _unet(options, lambda **cache: unet.apply(
        {"params": params}, *_on_batch(options, unet_in, time, context, mask), frame_index=frame_index,
        num_frames=n, noise_aug_time=noise_aug_time, motion_score=motion, input_layer="video",
        context_length=context_length, **cache), deep, keep)
    eps, = _on_batch(options, eps)
    full, image_only, unconditional = jnp.split(eps, 3)
    guided = guidance.three_way(full, image_only, unconditional, text_scale, image_scale)
    to_key_frame = ddpm.epsilon_of(schedule.alpha_bar(t), x, key_frames)
    # Both on the batch sharding: left to propagation on a mesh, this select gave other values than one
    # device even when nothing is kept (tests/kvjax/test_text_to_video_mesh.py), as the guidance slices did
    # (see _on_batch).
    return _cached(jnp.where(kept, *_on_batch(options, to_key_frame, guided)), deep, keep)

  x = _denoise(options, schedule, predict, x, step_rng, noise)
  return x.reshape(p, n, h, w, LATENT_CHANNELS)


def interpolate(unet, params, frames, text, null, guidance_scale, skip_frames: int, rng,
                options: SamplerOptions = SamplerOptions(INTERPOLATION_SCHEDULER), noise=None,
                context_length=None) -> jax.Array:
  """Three new frames between every pair of `frames` (P, T, h, w, 4) -> (P, 4T - 3, h, w, 4).

  Interpolation UNet with the T - 1 groups as its temporal axis; batch [conditional; unconditional] with
  the temporal layers and the base frames switched off (zeros) for the unconditional half; two-way
  guidance on v. Originals stay at multiples of 4, group i's frames follow original i (spec §8.5).
  """
  p, t, h, w, c = frames.shape
  g = t - 1
  schedule = make_schedule(options.scheduler)
  start_rng, step_rng = jax.random.split(rng)
  frames = frames.astype(jnp.float32)
  left = frames[:, :-1].reshape(p * g, h, w, c)
  right = frames[:, 1:].reshape(p * g, h, w, c)
  per_group = lambda tree: jax.tree.map(lambda a: jnp.repeat(a, g, axis=0), tree)
  context, mask = _stack(per_group(text), per_group(null))
  batch = 2 * p * g
  lefts, rights = (jnp.concatenate([a, jnp.zeros_like(a)]) for a in (left, right))
  temporal_mask = jnp.concatenate([jnp.ones((p * g,)), jnp.zeros((p * g,))])
  skip = jnp.full((batch,), skip_frames, jnp.int32)
  perturbation = jnp.zeros((batch,), jnp.int32)
  x = _noise(noise, "initial_noise",
             lambda: jax.random.normal(start_rng, (p * g, h, w, FRAMES_PER_GROUP * c), jnp.float32))

  def predict(x, t, deep=None, keep=False):
    unet_in = jnp.concatenate([lefts, jnp.concatenate([x, x]), rights], axis=-1)
    time = jnp.full((batch,), t, jnp.int32)
    v, deep = _unet(options, lambda **cache: unet.apply(
        {"params": params}, *_on_batch(options, unet_in, time, context, mask), num_groups=g,
        perturbation_time=perturbation, skip_frames=skip, temporal_mask=temporal_mask,
        context_length=context_length, **cache), deep, keep)
    v, = _on_batch(options, v)
    return _cached(guidance.two_way(v[:p * g], v[p * g:], guidance_scale), deep, keep)

  x = _denoise(options, schedule, predict, x, step_rng, noise)
  new = x.reshape(p, g, h, w, FRAMES_PER_GROUP, c).transpose(0, 1, 4, 2, 3, 5)  # channels (t c)
  interleaved = jnp.concatenate([frames[:, :-1, None], new], axis=2).reshape(p, 4 * g, h, w, c)
  return jnp.concatenate([interleaved, frames[:, -1:]], axis=1)
