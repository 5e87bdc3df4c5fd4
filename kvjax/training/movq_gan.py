"""Training the MoVQ as a GAN (the MoVQGAN recipe; the Kandinsky Video paper's temporal decoder).

Generator: the MoVQ autoencoder. Image recipe: everything trains. Video recipe: the encoder and quant conv
stay frozen (their latents are what the UNets were trained on) and the decoder, with its temporal layers,
learns to decode clips; `train_scope` picks the temporal layers alone or the whole decoder.

Generator loss (taming-transformers / MoVQGAN):
    nll = l1 |x - x'| + l2 (x - x')^2 + perceptual LPIPS(x, x')        (means)
    loss = nll + d_weight * factor(step) * (-mean D(x')) [+ latent_scale (mean z^2 - 1)^2]
with d_weight = adversarial_weight * ||grad_W nll|| / ||grad_W g|| over the output layer W when
`adaptive_weight` (else adversarial_weight), and factor 0 before `discriminator_start`.
Discriminator loss: factor(step) * hinge(D(x), D(x')) [+ R1 on real] [+ LeCam against EMAs of D's outputs].
Images judge frames one by one (a PatchGAN); videos judge whole clips with 3D convolutions (the paper's
temporal discriminator).

One step updates both networks from one generator forward: the discriminator sees the reconstructions of
the generator before its update (no second forward).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from kvjax.models.movq import output_layer
from kvjax.training import gan_losses
from kvjax.training.optimizer import OptimizerConfig, learning_rate_schedule
from kvjax.training.train_state import TrainState, all_finite, apply_gradients, trained_grad_norm

TRAIN_SCOPES = ("temporal", "decoder")
INIT_FROM = ("image", "video")


@dataclasses.dataclass(frozen=True)
class MoVQTrainingConfig:
  l1_weight: float = 1.0
  l2_weight: float = 0.0
  perceptual_weight: float = 0.1  # LPIPS; off (with a warning) when no LPIPS weights are given
  adversarial_weight: float = 0.1
  adaptive_weight: bool = True  # scale the adversarial term by the ratio of output-layer gradient norms
  discriminator_start: int = 0  # steps of reconstruction alone before the GAN terms switch on
  discriminator: str = "patch-discriminator"  # a DiscriminatorConfig preset
  lpips: str = "lpips-vgg"  # an LPIPS preset (its weights come from `python -m convert lpips`)
  r1_weight: float = 0.0  # gamma/2 of the R1 gradient penalty on real inputs
  lecam_weight: float = 0.0
  lecam_decay: float = 0.999
  # latent_scale_weight * (mean z^2 - 1)^2 keeps the latents at unit RMS: the pipeline feeds them to the
  # diffusion models unscaled, and those start from unit Gaussian noise (for MoVQs trained from scratch).
  latent_scale_weight: float = 0.0
  # The video recipe: which decoder weights train, and where they start (an image MoVQ with the temporal
  # layers at identity, or a converted video MoVQ).
  train_scope: str = "temporal"
  init_from: str = "image"
  # Decoder attention norms: the reference's quirk ("first_of_clip", what the pipeline decodes with) or "own".
  attention_norm_latent: str = "first_of_clip"
  # With the encoder frozen: the decoder learns from latents as a diffusion model's come out, not only
  # the encoder's. Each frame's latent keeps 1 - U[0, latent_contrast] of its deviation from its spatial
  # mean (a shape fainter against its background) and gains Gaussian noise of std U[0, latent_noise].
  latent_contrast: float = 0.0
  latent_noise: float = 0.0
  discriminator_optimizer: OptimizerConfig = OptimizerConfig(ema_decay=0.0)

  @property
  def adversarial(self) -> bool:
    """Whether the GAN terms exist: with adversarial_weight 0 neither network runs the discriminator."""
    return self.adversarial_weight > 0

  def __post_init__(self):
    if self.train_scope not in TRAIN_SCOPES:
      raise ValueError(f"MoVQTrainingConfig.train_scope must be one of {', '.join(TRAIN_SCOPES)}")
    if self.init_from not in INIT_FROM:
      raise ValueError(f"MoVQTrainingConfig.init_from must be one of {', '.join(INIT_FROM)}")
    weights = {k: getattr(self, k) for k in ("l1_weight", "l2_weight", "perceptual_weight", "adversarial_weight",
                                             "r1_weight", "lecam_weight", "latent_scale_weight")}
    if any(w < 0 for w in weights.values()) or not 0 <= self.lecam_decay < 1 or self.discriminator_start < 0:
      raise ValueError(f"MoVQTrainingConfig: loss weights and discriminator_start must be >= 0, lecam_decay in "
                       f"[0, 1): {weights}")
    if not (0 <= self.latent_contrast < 1 and self.latent_noise >= 0):
      raise ValueError(f"MoVQTrainingConfig: latent_contrast must be in [0, 1) (got {self.latent_contrast}) and "
                       f"latent_noise >= 0 (got {self.latent_noise})")
    if self.perturbs_latents and self.train_scope != "decoder":
      raise ValueError("MoVQTrainingConfig: latent_contrast and latent_noise perturb a frozen encoder's latents: "
                       f"they need train_scope 'decoder', got {self.train_scope!r}")

  @property
  def perturbs_latents(self) -> bool:
    return self.latent_contrast > 0 or self.latent_noise > 0


@flax.struct.dataclass
class GANState:
  generator: TrainState
  discriminator: TrainState
  lecam_ema: jax.Array  # (2,): EMAs of the discriminator's mean output on real and on reconstructed inputs

  @property
  def step(self) -> jax.Array:
    return self.generator.step


def identity_temporal_layers(image_params, video_abstract, seed: int = 0):
  """Video MoVQ parameters from an image MoVQ's: every shared weight copied, the temporal layers new and
  at identity. Blend gates (`temporal_merge*`) are 0 (the 3x3x3 convs get small random weights, so the
  gates' gradients point somewhere useful) and temporal attention adds nothing (`proj_out` zero)."""
  image = flax.traverse_util.flatten_dict(image_params)
  video = flax.traverse_util.flatten_dict(nn.unbox(video_abstract))
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in video.items():
    if path in image:
      if tuple(image[path].shape) != tuple(leaf.shape):
        raise ValueError(f"image MoVQ {'/'.join(path)} has shape {image[path].shape}, the video MoVQ "
                         f"needs {leaf.shape}: the two configurations differ beyond the temporal layers")
      out[path] = np.asarray(image[path], np.float32)
      continue
    name = "/".join(path)
    if "temporal" not in name:
      raise ValueError(f"the video MoVQ's {name} has no counterpart in the image MoVQ")
    if any(p.startswith("temporal_merge") for p in path):
      out[path] = np.zeros(leaf.shape, np.float32)
    elif "proj_out" in path or path[-1] == "bias":
      out[path] = np.zeros(leaf.shape, np.float32)
    elif path[-1] == "scale":
      out[path] = np.ones(leaf.shape, np.float32)
    else:  # kernels: PyTorch's default scale, shrunk
      fan_in = int(np.prod(leaf.shape[:-1]))
      out[path] = (0.1 / np.sqrt(fan_in) * rng.standard_normal(leaf.shape)).astype(np.float32)
  missing = sorted("/".join(p) for p in image if p not in video)
  if missing:
    raise ValueError(f"image MoVQ weights the video MoVQ does not have: {', '.join(missing[:5])}")
  return flax.traverse_util.unflatten_dict(out)


def perturb_latents(latents: jax.Array, step, config: MoVQTrainingConfig) -> jax.Array:
  """Frames' latents (N, h, w, C) with config's contrast loss and noise, drawn per frame from the step
  number (the same at a resumed step)."""
  k_contrast, k_sigma, k_noise = jax.random.split(jax.random.fold_in(jax.random.key(0), step), 3)
  per_frame = (latents.shape[0],) + (1,) * (latents.ndim - 1)
  contrast = 1 - config.latent_contrast * jax.random.uniform(k_contrast, per_frame)
  sigma = config.latent_noise * jax.random.uniform(k_sigma, per_frame)
  mean = jnp.mean(latents, axis=(1, 2), keepdims=True)
  return mean + contrast * (latents - mean) + sigma * jax.random.normal(k_noise, latents.shape, latents.dtype)


def _judged(x: jax.Array, video: bool) -> jax.Array:
  """Frames (B, T, H, W, C) as the discriminator takes them: clips, or (B T) single images."""
  return x if video else x.reshape(-1, *x.shape[2:])


def make_gan_losses(config: MoVQTrainingConfig, *, movq, discriminator, lpips, video: bool, pin=lambda x: x):
  """(generator_loss, discriminator_loss), pure functions for `jax.value_and_grad`.

  generator_loss(params, disc_params, lpips_params, frames, step) -> (loss, (metrics, reconstructions))
  discriminator_loss(disc_params, real, fake, step, lecam_ema) -> (loss, (mean D(real), mean D(fake)))
  `frames`: (B, T, H, W, 3) float in [-1, 1]; the video recipe decodes each clip of T frames together,
  the image recipe every frame alone. `lpips` None turns the perceptual term off.
  """
  head = output_layer(movq.config, dtype=movq.dtype, param_dtype=movq.param_dtype)

  def reconstruction_loss(real, fake, lpips_params):
    terms = {"l1": jnp.mean(jnp.abs(real - fake)), "l2": jnp.mean(jnp.square(real - fake))}
    nll = config.l1_weight * terms["l1"] + config.l2_weight * terms["l2"]
    if lpips is not None and config.perceptual_weight > 0:
      terms["perceptual"] = jnp.mean(lpips.apply({"params": lpips_params}, real, fake).astype(jnp.float32))
      nll = nll + config.perceptual_weight * terms["perceptual"]
    return nll, terms

  def judge(disc_params, x):
    return discriminator.apply({"params": disc_params}, pin(x)).astype(jnp.float32)

  def generator_loss(params, disc_params, lpips_params, frames, step):
    b, t = frames.shape[:2]
    images = pin(frames.reshape(b * t, *frames.shape[2:]))
    latents = movq.apply({"params": params}, images, method="encode")
    if video:  # the encoder is frozen: no backward pass through it
      latents = jax.lax.stop_gradient(latents)
    decoded = perturb_latents(latents, step, config) if config.perturbs_latents else latents
    features = movq.apply({"params": params}, decoded, t if video else 1, config.attention_norm_latent,
                          features_only=True, method="decode")
    decode_head = lambda head_params, f: head.apply({"params": head_params}, f).astype(jnp.float32)
    as_clips = lambda x: x.reshape(frames.shape)

    def terms(head_params, f):
      fake = decode_head(head_params, f)
      nll, parts = reconstruction_loss(images, fake, lpips_params)
      adversarial = (gan_losses.hinge_generator_loss(judge(disc_params, _judged(as_clips(fake), video)))
                     if config.adversarial else jnp.float32(0))
      return nll, adversarial, parts, fake

    head_params = params["decoder"]["conv_out"]
    nll, adversarial, parts, fake = terms(head_params, features)
    factor = gan_losses.discriminator_factor(step, config.discriminator_start)
    d_weight = jnp.float32(config.adversarial_weight)
    if config.adaptive_weight and config.adversarial:
      fixed = jax.lax.stop_gradient(features)  # gradients of the output layer alone
      nll_grad = jax.grad(lambda p: terms(p, fixed)[0])(head_params)["kernel"]
      adversarial_grad = jax.grad(lambda p: terms(p, fixed)[1])(head_params)["kernel"]
      d_weight = d_weight * gan_losses.adaptive_weight(nll_grad, adversarial_grad)
    loss = nll + d_weight * factor * adversarial
    latent_ms = jnp.mean(jnp.square(latents.astype(jnp.float32)))
    if config.latent_scale_weight > 0:
      loss = loss + config.latent_scale_weight * jnp.square(latent_ms - 1)
    metrics = {**{f"rec_{k}": v for k, v in parts.items()}, "nll": nll, "generator_adversarial": adversarial,
               "adaptive_weight": d_weight, "discriminator_factor": factor, "latent_rms": jnp.sqrt(latent_ms)}
    return loss, (metrics, as_clips(fake))

  def discriminator_loss(disc_params, real, fake, step, lecam_ema):
    real, fake = _judged(real, video), _judged(jax.lax.stop_gradient(fake), video)
    logits_real, logits_fake = judge(disc_params, real), judge(disc_params, fake)
    factor = gan_losses.discriminator_factor(step, config.discriminator_start)
    loss = factor * gan_losses.hinge_discriminator_loss(logits_real, logits_fake)
    if config.r1_weight > 0:
      loss = loss + factor * config.r1_weight * gan_losses.r1_penalty(lambda x: judge(disc_params, x), real)
    if config.lecam_weight > 0:
      loss = loss + factor * config.lecam_weight * gan_losses.lecam_regularizer(
          logits_real, logits_fake, lecam_ema[0], lecam_ema[1])
    return loss, (jnp.mean(logits_real), jnp.mean(logits_fake))

  return generator_loss, discriminator_loss


def frames_to_unit_range(frames: jax.Array) -> jax.Array:
  """uint8 frames -> float32 in [-1, 1], as the pipeline's MoVQ encode takes them."""
  return frames.astype(jnp.float32) / 255 * 2 - 1


def make_gan_train_step(config: MoVQTrainingConfig, *, generator_loss, discriminator_loss, generator_optimizer,
                        discriminator_optimizer, generator_optimizer_config: OptimizerConfig, trainable) -> Any:
  """`step(state, batch, frozen) -> (state, metrics)`: batch {"frames": uint8 (B, T, H, W, 3)}, frozen
  {"lpips": params or None}. Deterministic: what is drawn (perturb_latents) comes from the step number. A
  step with a non-finite loss or gradient norm (either network's) updates neither and says so in
  `metrics["nonfinite"]`, as `train_state.make_train_step` does."""

  g_schedule = learning_rate_schedule(generator_optimizer_config)
  d_schedule = learning_rate_schedule(config.discriminator_optimizer)

  def step(state: GANState, batch, frozen):
    frames = frames_to_unit_range(batch["frames"])
    g_state, d_state = state.generator, state.discriminator
    (g_loss, (metrics, fake)), g_grads = jax.value_and_grad(generator_loss, has_aux=True)(
        g_state.params, d_state.params, frozen.get("lpips"), frames, state.step)
    if config.adversarial:
      (d_loss, (mean_real, mean_fake)), d_grads = jax.value_and_grad(discriminator_loss, has_aux=True)(
          d_state.params, frames, fake, state.step, state.lecam_ema)
      d_norm = trained_grad_norm(d_grads, jax.tree.map(lambda _: True, d_grads))
    else:  # no GAN term: the discriminator would learn for nothing (a reconstruction recipe), so it rests
      d_loss = mean_real = mean_fake = d_norm = jnp.float32(0)
    lecam_ema = jnp.stack(gan_losses.lecam_ema_update((state.lecam_ema[0], state.lecam_ema[1]),
                                                      (mean_real, mean_fake), config.lecam_decay))
    g_norm = trained_grad_norm(g_grads, trainable)
    # One non-finite loss or gradient norm drops the whole step: both networks and the LeCam EMAs stay.
    finite = all_finite(g_loss, d_loss, g_norm, d_norm)
    metrics = {"loss": g_loss, **metrics, "discriminator_loss": d_loss, "logits_real": mean_real,
               "logits_fake": mean_fake, "grad_norm": g_norm, "discriminator_grad_norm": d_norm,
               "learning_rate": g_schedule(state.step // generator_optimizer_config.accumulation_steps),
               "discriminator_learning_rate": d_schedule(state.step), "nonfinite": (~finite).astype(jnp.float32)}
    new_state = GANState(apply_gradients(g_state, g_grads, generator_optimizer, generator_optimizer_config, finite),
                         apply_gradients(d_state, d_grads, discriminator_optimizer, config.discriminator_optimizer,
                                         finite) if config.adversarial else d_state.replace(step=d_state.step + 1),
                         jnp.where(finite, lecam_ema, state.lecam_ema))
    return new_state, metrics

  return step
