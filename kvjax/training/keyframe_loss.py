"""The keyframe UNet's training objectives (paper and spec §7, §8).

Video mode (the paper's recipe): epsilon prediction on clips whose first frame is given as a condition with
noise of random magnitude (and that magnitude as an input), blanked 10% of the time; text dropped to the
null embedding for guidance; motion score as an input.

Image mode (the Kandinsky 3.0 role, for a UNet trained from scratch): epsilon prediction on single frames
through the image input layer with the condition channels zero, as the key-frame sampler runs it; no
temporal layer takes part. Text is dropped as in video mode."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kvjax.diffusion.ddpm import add_noise
from kvjax.diffusion.schedule import KEYFRAME_SCHEDULER, make_schedule
from kvjax.text.conditioning import prompt_lengths
from kvjax.training.augment import (batch_pinning, check_high_noise, draw_timesteps, drop_text, noise_augment,
                                    where_sample)


MODES = ("video", "image")
TRAIN_SCOPES = ("temporal", "all")
LOSS_WEIGHTINGS = ("epsilon", "v")


@dataclasses.dataclass(frozen=True)
class KeyframeTrainingConfig:
  mode: str = "video"  # MODES; image mode trains the image weights (every non-temporal layer)
  train_scope: str = "temporal"  # video mode: the temporal layers (the paper) or every weight
  max_noise_augmentation: int = 100  # first-frame noise level ~ U{0..max} (the sampler uses 20)
  # The reference sampler noises the first frame with U[0, 1) noise (spec §7.5); training matches it.
  augmentation_noise: str = "uniform"
  blank_first_frame_probability: float = 0.1
  text_dropout_probability: float = 0.1
  # Multiplies the dataset's motion scores before the UNet sees them, to put them in the units of the
  # sampler's motion table (low/medium/high/extreme = 1/10/50/100).
  motion_scale: float = 1.0
  # A video-mode run from an image-mode UNet of ours (the demo): `in_layer` starts as the trained
  # `image_in_layer` with its condition channels zero, so the video UNet begins as the image model on its
  # noisy frames and learns to read the first-frame condition. (The official `in_layer` is trained: off.)
  video_input_from_image: bool = False
  # Both modes: "epsilon", the plain mean squared epsilon error (the paper's); or "v", each sample's epsilon
  # error weighted by min(1 / alpha_bar_t, max_loss_weight), the error a v-prediction loss gives the same
  # model. The epsilon loss barely changes at high noise when the model knows x0 (its error is x0's times
  # sqrt(alpha_bar / (1 - alpha_bar))), so it teaches little use of the first frame and the prompt where the
  # sampler decides the layout; "v" weights those steps up. Uncapped (max_loss_weight above 1 / alpha_bar_T,
  # 2.5e4 here) the high-noise error is x0's own. Weights are divided by their mean over t.
  loss_weighting: str = "epsilon"
  max_loss_weight: float = 20.0
  # Both modes: this fraction of the samples draws its timestep from [high_noise_start, T), not [0, T).
  # Below about t = 950 the noisy frames themselves show where a shape is and which way it goes, so what
  # the prompt alone decides (the layout, the direction) is learnt only from the few steps above, which are
  # the sampler's first.
  high_noise_fraction: float = 0.0
  high_noise_start: int = 900

  def __post_init__(self):
    if self.mode not in MODES or self.train_scope not in TRAIN_SCOPES:
      raise ValueError(f"KeyframeTrainingConfig: mode must be one of {', '.join(MODES)} (got {self.mode!r}), "
                       f"train_scope one of {', '.join(TRAIN_SCOPES)} (got {self.train_scope!r})")
    if not self.motion_scale > 0:
      raise ValueError(f"KeyframeTrainingConfig.motion_scale must be positive, got {self.motion_scale}")
    if self.loss_weighting not in LOSS_WEIGHTINGS or not self.max_loss_weight >= 1:
      raise ValueError(f"KeyframeTrainingConfig: loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)} (got "
                       f"{self.loss_weighting!r}) and max_loss_weight at least 1 (got {self.max_loss_weight})")
    check_high_noise("KeyframeTrainingConfig", self.high_noise_fraction, self.high_noise_start,
                     KEYFRAME_SCHEDULER.num_train_timesteps)


def loss_weights(config: KeyframeTrainingConfig, alphas_cumprod: jax.Array) -> jax.Array:
  """The per-timestep weight of the epsilon error (T,), mean 1 (all ones for "epsilon")."""
  if config.loss_weighting == "epsilon":
    return jnp.ones_like(alphas_cumprod)
  weights = jnp.minimum(1.0 / jnp.maximum(alphas_cumprod, 1e-12), config.max_loss_weight)
  return weights / jnp.mean(weights)


def video_input_from_image(params, latent_channels: int):
  """Keyframe UNet params with `in_layer` := `image_in_layer`, the kernel's inputs past the noisy latent's
  `latent_channels` (condition latent and mask) zero."""
  image = params["image_in_layer"]
  kernel = jnp.asarray(image["kernel"])
  kernel = kernel.at[..., latent_channels:, :].set(0)
  return {**params, "in_layer": {**image, "kernel": kernel.astype(image["kernel"].dtype)}}


def keyframe_loss(params, batch, rng, *, model, config: KeyframeTrainingConfig, null_embedding,
                  activation_sharding=None) -> jax.Array:
  """Mean squared epsilon error, each sample's weighted by `loss_weights`. `batch`: latents (B, T, h, w, 4),
  context (B, L, D), context_mask (B, L), motion_score (B,). `activation_sharding` pins the draws and the UNet's input and output to the batch
  layout (`augment.batch_pinning`)."""
  pin = batch_pinning(activation_sharding)
  latents = batch["latents"].astype(jnp.float32)
  b, t, h, w, c = latents.shape
  schedule = make_schedule(KEYFRAME_SCHEDULER)
  k_time, k_noise, k_level, k_aug, k_blank, k_text = jax.random.split(rng, 6)
  time = pin(draw_timesteps(config.high_noise_fraction, config.high_noise_start, k_time, b,
                            schedule.alphas_cumprod.shape[0]))
  noise = pin(jax.random.normal(k_noise, latents.shape))
  noisy = add_noise(schedule, latents, noise, time)

  level = pin(jax.random.randint(k_level, (b,), 0, config.max_noise_augmentation + 1))
  first = noise_augment(schedule, latents[:, 0], level, k_aug, config.augmentation_noise, pin)
  given = pin(jax.random.bernoulli(k_blank, 1 - config.blank_first_frame_probability, (b,)))
  condition = jnp.zeros((b, t, h, w, c + 1), jnp.float32)
  condition = condition.at[:, 0, ..., :c].set(where_sample(given, first, 0.0))
  condition = condition.at[:, 0, ..., c].set(where_sample(given, jnp.ones((b, h, w)), 0.0))

  dropped = pin(jax.random.bernoulli(k_text, config.text_dropout_probability, (b,)))
  context, mask = drop_text(batch["context"], batch["context_mask"], null_embedding, dropped)

  per_frame = lambda x: jnp.repeat(x, t, axis=0)
  unet_in = jnp.concatenate([noisy, condition], axis=-1).reshape(b * t, h, w, c + c + 1)
  eps = model.apply({"params": params}, pin(unet_in), per_frame(time).astype(jnp.float32), per_frame(context),
                    per_frame(mask), frame_index=jnp.tile(jnp.arange(t, dtype=jnp.float32), b), num_frames=t,
                    noise_aug_time=per_frame(level),
                    motion_score=per_frame(config.motion_scale * batch["motion_score"].astype(jnp.float32)),
                    input_layer="video", context_length=per_frame(prompt_lengths(batch["context_mask"])))
  errors = jnp.mean(jnp.square(pin(eps).astype(jnp.float32).reshape(latents.shape) - noise), axis=(1, 2, 3, 4))
  return jnp.mean(loss_weights(config, schedule.alphas_cumprod)[time] * errors)


def keyframe_image_loss(params, batch, rng, *, model, config: KeyframeTrainingConfig, null_embedding,
                        activation_sharding=None) -> jax.Array:
  """Mean squared epsilon error of every frame alone, in image mode, weighted and drawn over timesteps as
  in video mode. `batch`: latents (B, T, h, w, 4) (each frame an image), context (B, L, D), context_mask
  (B, L); the motion score is not used."""
  pin = batch_pinning(activation_sharding)
  latents = batch["latents"].astype(jnp.float32)
  b, t, h, w, c = latents.shape
  images = latents.reshape(b * t, h, w, c)
  schedule = make_schedule(KEYFRAME_SCHEDULER)
  k_time, k_noise, k_text = jax.random.split(rng, 3)
  time = pin(draw_timesteps(config.high_noise_fraction, config.high_noise_start, k_time, b * t,
                            schedule.alphas_cumprod.shape[0]))
  noise = pin(jax.random.normal(k_noise, images.shape))
  noisy = add_noise(schedule, images, noise, time)
  dropped = pin(jax.random.bernoulli(k_text, config.text_dropout_probability, (b * t,)))
  per_frame = lambda x: jnp.repeat(x, t, axis=0)
  context, mask = drop_text(per_frame(batch["context"]), per_frame(batch["context_mask"]), null_embedding, dropped)
  unet_in = jnp.concatenate([noisy, jnp.zeros((b * t, h, w, c + 1), jnp.float32)], axis=-1)
  eps = model.apply({"params": params}, pin(unet_in), time.astype(jnp.float32), context, mask, input_layer="image",
                    context_length=per_frame(prompt_lengths(batch["context_mask"])))
  errors = jnp.mean(jnp.square(pin(eps).astype(jnp.float32) - noise), axis=(1, 2, 3))
  return jnp.mean(loss_weights(config, schedule.alphas_cumprod)[time] * errors)
