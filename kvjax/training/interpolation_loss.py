"""The interpolation UNet's training objective: v prediction of the three frames between each pair of
key frames of a clip (spec §4.8, §7.6).

A clip of 4G + 1 latent frames holds G groups: key frames at 4i and 4(i + 1), targets 4i + 1 ... 4i + 3.
The groups of a clip are the UNet's temporal axis, as in the sampler. The skip-frame index s says how far
apart the clip's frames are in the source video (the data side samples every (s + 1)-th frame; the
pipeline uses s = 3 for its first pass and s = 1 for its second). Key frames are forward-noised to a random
perturbation level given as an input (the sampler passes 0). With the unconditional probability a clip
gets what the sampler's unconditional branch gets: the null context, zero key frames and the temporal
layers switched off (temporal mask 0).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kvjax.diffusion.ddpm import add_noise, velocity
from kvjax.diffusion.schedule import INTERPOLATION_SCHEDULER, make_schedule
from kvjax.models.interpolation_unet import FRAMES_PER_GROUP
from kvjax.text.conditioning import prompt_lengths
from kvjax.training.augment import (batch_pinning, check_high_noise, draw_timesteps, drop_text, noise_augment,
                                    where_sample)



@dataclasses.dataclass(frozen=True)
class InterpolationTrainingConfig:
  skip_frames: tuple[int, ...] = (3, 1)  # drawn uniformly per clip by the data side
  # Source frames between consecutive frames of a training clip, one per skip_frames entry; () is s + 1 for
  # skip s (the reference's data: keys of the medium pass 16 source frames apart). A world whose base
  # frames are closer sets its own: the demo's keyframe UNet learns from every 4th frame, so the frames the
  # medium pass fills in are consecutive source frames (spacing 1).
  source_spacing: tuple[int, ...] = ()
  # This fraction of the clips draws its timestep from [high_noise_start, T), not [0, T): the v loss weighs
  # low noise most (its x0 error times SNR + 1), where the noisy frames show the answer, and the keys
  # matter most where they do not.
  high_noise_fraction: float = 0.0
  high_noise_start: int = 900
  max_perturbation: int = 25  # key-frame noise level ~ U{0..max}; the model's default when none is given
  augmentation_noise: str = "gaussian"
  unconditional_probability: float = 0.1
  train_scope: str = "temporal"  # the temporal and new layers (on an image model), or "all" (from scratch)

  def __post_init__(self):
    if self.train_scope not in ("temporal", "all"):
      raise ValueError(f"InterpolationTrainingConfig.train_scope must be temporal or all, got {self.train_scope!r}")
    if len(set(self.skip_frames)) != len(self.skip_frames) or not self.skip_frames:
      raise ValueError(f"InterpolationTrainingConfig.skip_frames {self.skip_frames} must be one or more distinct values")
    check_high_noise("InterpolationTrainingConfig", self.high_noise_fraction, self.high_noise_start,
                     INTERPOLATION_SCHEDULER.num_train_timesteps)
    if self.source_spacing and (len(self.source_spacing) != len(self.skip_frames) or min(self.source_spacing) < 1):
      raise ValueError(f"InterpolationTrainingConfig.source_spacing {self.source_spacing} must give a spacing >= 1 "
                       f"for each of skip_frames {self.skip_frames}, or be empty")

  @property
  def spacings(self) -> tuple[int, ...]:
    """Source frames between consecutive clip frames, per skip_frames entry."""
    return self.source_spacing or tuple(s + 1 for s in self.skip_frames)


def clip_frames(num_groups: int) -> int:
  return FRAMES_PER_GROUP * num_groups + num_groups + 1


def keys_and_targets(latents: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A clip of 4G + 1 latent frames (B, 4G + 1, h, w, c) -> its key frames (B, G + 1, h, w, c) and each
  group's three middle frames as the UNet outputs them (B, G, h, w, 3c), frame-major channels (spec §4.8)."""
  b, frames, h, w, c = latents.shape
  g = (frames - 1) // (FRAMES_PER_GROUP + 1)
  if frames != clip_frames(g) or g < 1:
    raise ValueError(f"interpolation clips have 4G + 1 latent frames (G >= 1 groups), got {frames}")
  groups = latents[:, :-1].reshape(b, g, FRAMES_PER_GROUP + 1, h, w, c)
  targets = groups[:, :, 1:].transpose(0, 1, 3, 4, 2, 5).reshape(b, g, h, w, FRAMES_PER_GROUP * c)
  return latents[:, ::FRAMES_PER_GROUP + 1], targets


def interpolation_loss(params, batch, rng, *, model, config: InterpolationTrainingConfig, null_embedding,
                       activation_sharding=None) -> jax.Array:
  """Mean squared v error. `batch`: latents (B, 4G + 1, h, w, 4), context (B, L, D), context_mask (B, L),
  skip_frames (B,) int."""
  pin = batch_pinning(activation_sharding)
  keys, targets = keys_and_targets(batch["latents"].astype(jnp.float32))
  b, g, h, w = targets.shape[:4]
  schedule = make_schedule(INTERPOLATION_SCHEDULER)
  k_time, k_noise, k_level, k_aug, k_uncond = jax.random.split(rng, 5)

  time = pin(draw_timesteps(config.high_noise_fraction, config.high_noise_start, k_time, b,
                            schedule.alphas_cumprod.shape[0]))
  noise = pin(jax.random.normal(k_noise, targets.shape))
  per_clip = lambda x: jnp.repeat(x, g, axis=0)  # (B, ...) -> (B G, ...), group index minor
  noisy = add_noise(schedule, targets, noise, time)
  target_v = velocity(schedule, targets, noise, time)

  level = pin(jax.random.randint(k_level, (b,), 0, config.max_perturbation + 1))
  keys = noise_augment(schedule, keys.reshape(b, -1), level, k_aug, config.augmentation_noise, pin).reshape(keys.shape)
  unconditional = pin(jax.random.bernoulli(k_uncond, config.unconditional_probability, (b,)))
  keys = where_sample(unconditional, jnp.zeros_like(keys), keys)
  context, mask = drop_text(batch["context"], batch["context_mask"], null_embedding, unconditional)

  left, right = keys[:, :-1], keys[:, 1:]
  unet_in = jnp.concatenate([left, noisy, right], axis=-1).reshape(b * g, h, w, -1)
  v = model.apply({"params": params}, pin(unet_in), per_clip(time), per_clip(context), per_clip(mask),
                  num_groups=g, perturbation_time=per_clip(level), skip_frames=per_clip(batch["skip_frames"]),
                  temporal_mask=per_clip(jnp.where(unconditional, 0.0, 1.0)),
                  context_length=per_clip(prompt_lengths(batch["context_mask"])))
  return jnp.mean(jnp.square(pin(v).astype(jnp.float32).reshape(target_v.shape) - target_v))
