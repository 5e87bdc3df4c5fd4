"""The training objectives' batch layouts, checked with stand-in models that see exactly what the UNet sees."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax.diffusion.schedule import INTERPOLATION_SCHEDULER, KEYFRAME_SCHEDULER, alphas_cumprod
from kvjax.training.interpolation_loss import InterpolationTrainingConfig, clip_frames, interpolation_loss
from kvjax.training.keyframe_loss import KeyframeTrainingConfig, keyframe_image_loss, keyframe_loss, loss_weights

B, G, H, W, C, L, D = 3, 2, 4, 4, 4, 5, 6
NULL = np.linspace(-1, 1, D).astype(np.float32)


class Recorder:
  """A stand-in UNet: records its inputs and returns `respond(inputs)`."""

  def __init__(self, respond):
    self.respond, self.seen = respond, {}

  def apply(self, variables, x, time, context, mask, **kwargs):
    self.seen = dict(x=x, time=time, context=context, mask=mask, **kwargs)
    return self.respond(self.seen)


def _interpolation_batch():
  rng = np.random.default_rng(0)
  mask = np.zeros((B, L), bool)
  mask[:, :2] = True
  return {"latents": rng.normal(size=(B, clip_frames(G), H, W, C)).astype(np.float32),
          "context": rng.normal(size=(B, L, D)).astype(np.float32), "context_mask": mask,
          "skip_frames": np.array([3, 1, 3], np.int32)}


def test_interpolation_targets_and_layout():
  batch = _interpolation_batch()
  latents = batch["latents"]
  # the clean in-between frames of group i, frame-major channels (spec §4.8)
  clean = np.stack([np.concatenate([latents[:, 4 * i + k] for k in (1, 2, 3)], axis=-1) for i in range(G)], 1)
  clean = clean.reshape(B * G, H, W, 3 * C)
  abar = jnp.asarray(alphas_cumprod(INTERPOLATION_SCHEDULER))

  def perfect_v(seen):  # v = (sqrt(abar) x_t - x0) / sqrt(1 - abar): what a perfect model answers
    a = abar[seen["time"]].reshape(-1, 1, 1, 1)
    return (jnp.sqrt(a) * seen["x"][..., C:4 * C] - clean) / jnp.sqrt(1 - a)

  model = Recorder(perfect_v)
  config = InterpolationTrainingConfig(max_perturbation=0, unconditional_probability=0.0)
  loss = interpolation_loss({}, batch, jax.random.key(3), model=model, config=config, null_embedding=NULL)
  assert float(loss) < 1e-6
  seen = model.seen
  assert seen["x"].shape == (B * G, H, W, 5 * C) and seen["num_groups"] == G
  left = np.stack([latents[:, 4 * i] for i in range(G)], 1).reshape(B * G, H, W, C)
  right = np.stack([latents[:, 4 * i + 4] for i in range(G)], 1).reshape(B * G, H, W, C)
  tolerance = 6 * float(jnp.sqrt(1 - abar[0]))  # level 0 still noises a little (6 sigma)
  np.testing.assert_allclose(seen["x"][..., :C], left, atol=tolerance)
  np.testing.assert_allclose(seen["x"][..., 4 * C:], right, atol=tolerance)
  np.testing.assert_array_equal(seen["skip_frames"], np.repeat(batch["skip_frames"], G))
  np.testing.assert_array_equal(seen["temporal_mask"], np.ones(B * G))
  np.testing.assert_array_equal(seen["perturbation_time"], np.zeros(B * G))
  assert np.all(seen["time"].reshape(B, G) == seen["time"].reshape(B, G)[:, :1])  # one timestep per clip
  np.testing.assert_array_equal(seen["context"], np.repeat(batch["context"], G, axis=0))


def test_interpolation_unconditional_clips_see_what_the_sampler_branch_sees():
  batch = _interpolation_batch()
  model = Recorder(lambda seen: jnp.zeros(seen["x"].shape[:3] + (3 * C,)))
  config = InterpolationTrainingConfig(unconditional_probability=1.0)
  interpolation_loss({}, batch, jax.random.key(0), model=model, config=config, null_embedding=NULL)
  seen = model.seen
  assert not np.any(seen["x"][..., :C]) and not np.any(seen["x"][..., 4 * C:])  # zero key frames
  np.testing.assert_array_equal(seen["temporal_mask"], np.zeros(B * G))
  np.testing.assert_array_equal(seen["context"][:, 0], np.broadcast_to(NULL, (B * G, D)))
  assert not np.any(seen["context"][:, 1:]) and np.array_equal(seen["mask"], np.eye(1, L, dtype=bool).repeat(B * G, 0))


def test_interpolation_perturbation_levels_are_drawn_and_given():
  model = Recorder(lambda seen: jnp.zeros(seen["x"].shape[:3] + (3 * C,)))
  levels = set()
  for seed in range(6):
    interpolation_loss({}, _interpolation_batch(), jax.random.key(seed), model=model,
                       config=InterpolationTrainingConfig(max_perturbation=25), null_embedding=NULL)
    levels |= set(np.asarray(model.seen["perturbation_time"]).tolist())
  assert len(levels) > 3 and max(levels) <= 25


def test_interpolation_high_noise_fraction_draws_that_share_of_clips_from_the_top_timesteps():
  batch = _interpolation_batch()

  def drawn(config, seed):
    model = Recorder(lambda seen: jnp.zeros((B * G, H, W, 3 * C)))
    interpolation_loss({}, batch, jax.random.key(seed), model=model, config=config, null_embedding=NULL)
    return np.asarray(model.seen["time"])

  top = [drawn(InterpolationTrainingConfig(high_noise_fraction=1.0, high_noise_start=950), seed) for seed in range(5)]
  assert min(t.min() for t in top) >= 950
  # Fraction 0 draws exactly the uniform timesteps, whatever the start.
  np.testing.assert_array_equal(drawn(InterpolationTrainingConfig(), 3),
                                drawn(InterpolationTrainingConfig(high_noise_start=500), 3))
  with pytest.raises(ValueError, match="high_noise_fraction"):
    InterpolationTrainingConfig(high_noise_fraction=-0.1)


def _perfect_keyframe_eps(clean):
  """A stand-in UNet's response: the exact noise of its noisy latents (channels :C) given the clean frames."""
  abar = jnp.asarray(alphas_cumprod(KEYFRAME_SCHEDULER))

  def respond(seen):
    a = abar[seen["time"].astype(jnp.int32)].reshape(-1, 1, 1, 1)
    return (seen["x"][..., :C] - jnp.sqrt(a) * clean) / jnp.sqrt(1 - a)
  return respond


def test_keyframe_condition_frame_and_targets():
  rng = np.random.default_rng(1)
  t = 3
  mask = np.ones((B, L), bool)
  batch = {"latents": rng.normal(size=(B, t, H, W, C)).astype(np.float32),
           "context": rng.normal(size=(B, L, D)).astype(np.float32), "context_mask": mask,
           "motion_score": np.array([1.0, 10.0, 50.0], np.float32)}
  abar = jnp.asarray(alphas_cumprod(KEYFRAME_SCHEDULER))
  model = Recorder(_perfect_keyframe_eps(batch["latents"].reshape(B * t, H, W, C)))
  config = KeyframeTrainingConfig(max_noise_augmentation=0, blank_first_frame_probability=0.0,
                                  text_dropout_probability=0.0)
  loss = keyframe_loss({}, batch, jax.random.key(2), model=model, config=config, null_embedding=NULL)
  assert float(loss) < 1e-6
  seen = model.seen
  x = np.asarray(seen["x"]).reshape(B, t, H, W, 2 * C + 1)
  # the first frame is given, noised to level 0 with uniform noise
  np.testing.assert_allclose(x[:, 0, ..., C:2 * C], batch["latents"][:, 0], atol=float(jnp.sqrt(1 - abar[0])) + 1e-3)
  assert np.all(x[:, 0, ..., 2 * C] == 1) and not np.any(x[:, 1:, ..., C:])  # mask on frame 0 only
  np.testing.assert_array_equal(seen["frame_index"], np.tile(np.arange(t), B))
  np.testing.assert_array_equal(seen["motion_score"], np.repeat(batch["motion_score"], t))
  assert seen["num_frames"] == t and seen["input_layer"] == "video"

  blank = dataclasses.replace(config, blank_first_frame_probability=1.0)
  keyframe_loss({}, batch, jax.random.key(2), model=model, config=blank, null_embedding=NULL)
  assert not np.any(np.asarray(model.seen["x"])[..., C:])


def test_keyframe_motion_scale_multiplies_the_dataset_score():
  rng = np.random.default_rng(1)
  batch = {"latents": rng.normal(size=(B, 2, H, W, C)).astype(np.float32),
           "context": rng.normal(size=(B, L, D)).astype(np.float32), "context_mask": np.ones((B, L), bool),
           "motion_score": np.array([0.03, 0.1, 0.15], np.float32)}
  model = Recorder(lambda seen: jnp.zeros(seen["x"].shape[:-1] + (C,)))
  keyframe_loss({}, batch, jax.random.key(0), model=model, config=KeyframeTrainingConfig(motion_scale=300.0),
                null_embedding=NULL)
  np.testing.assert_allclose(model.seen["motion_score"], np.repeat([9.0, 30.0, 45.0], 2), rtol=1e-6)


def test_keyframe_v_weighting_is_the_v_loss_of_the_epsilon_error_capped():
  abar = jnp.asarray(alphas_cumprod(KEYFRAME_SCHEDULER))
  np.testing.assert_array_equal(loss_weights(KeyframeTrainingConfig(), abar), 1.0)
  weights = np.asarray(loss_weights(KeyframeTrainingConfig(loss_weighting="v", max_loss_weight=20.0), abar))
  np.testing.assert_allclose(weights.mean(), 1.0, rtol=1e-5)
  assert np.all(np.diff(weights) >= 0) and np.isclose(weights.max() / weights.min(), 20.0, rtol=1e-3)
  np.testing.assert_allclose(weights[500] / weights[0], abar[0] / abar[500], rtol=1e-4)  # 1 / alpha_bar below the cap
  # The loss is the weighted mean of each sample's epsilon error: a model off by 1 everywhere scores the
  # mean weight of the drawn timesteps.
  rng = np.random.default_rng(1)
  batch = {"latents": rng.normal(size=(B, 2, H, W, C)).astype(np.float32),
           "context": rng.normal(size=(B, L, D)).astype(np.float32), "context_mask": np.ones((B, L), bool),
           "motion_score": np.zeros(B, np.float32)}
  model = Recorder(lambda seen: jnp.zeros(seen["x"].shape[:-1] + (C,)))
  config = KeyframeTrainingConfig(loss_weighting="v")
  loss = keyframe_loss({}, batch, jax.random.key(0), model=model, config=config, null_embedding=NULL)
  times = np.asarray(model.seen["time"]).reshape(B, 2)[:, 0].astype(int)
  noise_error = float(keyframe_loss({}, batch, jax.random.key(0), model=model, config=KeyframeTrainingConfig(),
                                    null_embedding=NULL))
  assert 0.5 < noise_error < 1.5 and float(loss) > 0
  assert np.isclose(float(loss) / noise_error, weights[times].mean(), rtol=0.3)
  with pytest.raises(ValueError, match="loss_weighting"):
    KeyframeTrainingConfig(loss_weighting="snr")


def test_keyframe_high_noise_fraction_draws_that_share_of_clips_from_the_top_timesteps():
  rng = np.random.default_rng(2)
  batch = {"latents": rng.normal(size=(B, 2, H, W, C)).astype(np.float32),
           "context": rng.normal(size=(B, L, D)).astype(np.float32), "context_mask": np.ones((B, L), bool),
           "motion_score": np.zeros(B, np.float32)}
  model = Recorder(lambda seen: jnp.zeros(seen["x"].shape[:-1] + (C,)))

  def drawn(config, seed):  # each clip's timestep
    keyframe_loss({}, batch, jax.random.key(seed), model=model, config=config, null_embedding=NULL)
    return np.asarray(model.seen["time"]).reshape(B, 2)[:, 0]

  high = [drawn(KeyframeTrainingConfig(high_noise_fraction=1.0, high_noise_start=900), seed) for seed in range(20)]
  assert np.all(np.concatenate(high) >= 900)
  plain = [drawn(KeyframeTrainingConfig(), seed) for seed in range(20)]
  assert np.mean(np.concatenate(plain) >= 900) < 0.3
  # The default draws exactly the timesteps it drew before the option existed (fraction 0: no clip moves).
  np.testing.assert_array_equal(drawn(KeyframeTrainingConfig(high_noise_fraction=0.0, high_noise_start=500), 3),
                                plain[3])
  with pytest.raises(ValueError, match="high_noise_start"):
    KeyframeTrainingConfig(high_noise_start=1000)
  with pytest.raises(ValueError, match="high_noise_fraction"):
    KeyframeTrainingConfig(high_noise_fraction=1.5)


def test_keyframe_image_mode_sees_frames_alone_as_the_key_frame_sampler_runs_them():
  # Every frame is an image: image input layer, condition channels zero, no frame index, motion or level.
  rng = np.random.default_rng(3)
  t = 2
  batch = {"latents": rng.normal(size=(B, t, H, W, C)).astype(np.float32),
           "context": rng.normal(size=(B, L, D)).astype(np.float32), "context_mask": np.ones((B, L), bool),
           "motion_score": np.zeros((B,), np.float32)}
  model = Recorder(_perfect_keyframe_eps(batch["latents"].reshape(B * t, H, W, C)))
  config = KeyframeTrainingConfig(mode="image", text_dropout_probability=0.0)
  assert float(keyframe_image_loss({}, batch, jax.random.key(2), model=model, config=config,
                                   null_embedding=NULL)) < 1e-6
  seen = model.seen
  assert seen["x"].shape == (B * t, H, W, 2 * C + 1) and not np.any(np.asarray(seen["x"])[..., C:])
  assert seen["input_layer"] == "image" and "frame_index" not in seen and "motion_score" not in seen
  np.testing.assert_array_equal(seen["context"], np.repeat(batch["context"], t, axis=0))
  dropped = dataclasses.replace(config, text_dropout_probability=1.0)
  keyframe_image_loss({}, batch, jax.random.key(2), model=model, config=dropped, null_embedding=NULL)
  np.testing.assert_array_equal(np.asarray(model.seen["context"])[:, 0], np.broadcast_to(NULL, (B * t, D)))


def test_a_video_run_can_start_its_input_layer_from_the_image_one():
  from kvjax.model_configs import KEYFRAME_TINY
  from kvjax.params import random_params
  from kvjax.training.keyframe_loss import video_input_from_image
  params = random_params(KEYFRAME_TINY, 0)
  started = video_input_from_image(params, KEYFRAME_TINY.out_channels)
  image, video = params["image_in_layer"], started["in_layer"]
  np.testing.assert_array_equal(video["kernel"][..., :4, :], image["kernel"][..., :4, :])
  assert not np.any(video["kernel"][..., 4:, :]) and np.any(image["kernel"][..., 4:, :])
  np.testing.assert_array_equal(video["bias"], image["bias"])
  assert started["image_in_layer"] is image


def test_image_mode_draws_and_weights_timesteps_as_video_mode():
  rng = np.random.default_rng(3)
  batch = {"latents": rng.normal(size=(B, 2, H, W, C)).astype(np.float32),
           "context": rng.normal(size=(B, L, D)).astype(np.float32), "context_mask": np.ones((B, L), bool)}
  model = Recorder(lambda seen: jnp.zeros(seen["x"].shape[:-1] + (C,)))
  loss = lambda config: float(keyframe_image_loss({}, batch, jax.random.key(4), model=model, config=config,
                                                  null_embedding=NULL))
  plain = loss(KeyframeTrainingConfig(mode="image"))
  plain_times = np.asarray(model.seen["time"]).astype(int)
  top = dict(mode="image", high_noise_fraction=1.0, high_noise_start=900)
  loss(KeyframeTrainingConfig(**top))
  assert np.all(np.asarray(model.seen["time"]) >= 900)
  weighted = loss(KeyframeTrainingConfig(mode="image", loss_weighting="v", max_loss_weight=5000.0))
  np.testing.assert_array_equal(np.asarray(model.seen["time"]).astype(int), plain_times)
  abar = jnp.asarray(alphas_cumprod(KEYFRAME_SCHEDULER))
  weights = np.asarray(loss_weights(KeyframeTrainingConfig(loss_weighting="v", max_loss_weight=5000.0), abar))
  assert np.isclose(weighted / plain, weights[plain_times].mean(), rtol=0.3)


def test_every_objective_pools_the_text_over_each_prompts_own_length_as_sampling_does():
  # Sampling divides the pooled text by L (the prompt's tokens + 1): each objective passes that L per sample,
  # repeated as its context is (per frame, per group), dropped samples keeping their prompt's L as the
  # sampler's unconditional branch does.
  rng = np.random.default_rng(4)
  mask = np.zeros((B, L), bool)
  for i, n in enumerate((1, 3, L)):
    mask[i, :n] = True
  lengths = np.array([2, 4, L])  # the last fills every position: no padded one is kept
  t = 2
  batch = {"latents": rng.normal(size=(B, t, H, W, C)).astype(np.float32),
           "context": rng.normal(size=(B, L, D)).astype(np.float32), "context_mask": mask,
           "motion_score": np.zeros((B,), np.float32)}
  model = Recorder(lambda seen: jnp.zeros_like(seen["x"][..., :C]))
  config = KeyframeTrainingConfig(text_dropout_probability=1.0)
  keyframe_loss({}, batch, jax.random.key(0), model=model, config=config, null_embedding=NULL)
  np.testing.assert_array_equal(model.seen["context_length"], np.repeat(lengths, t))
  keyframe_image_loss({}, batch, jax.random.key(0), model=model, config=dataclasses.replace(config, mode="image"),
                      null_embedding=NULL)
  np.testing.assert_array_equal(model.seen["context_length"], np.repeat(lengths, t))
  clips = {**_interpolation_batch(), "context_mask": mask}
  model = Recorder(lambda seen: jnp.zeros_like(seen["x"][..., :3 * C]))
  interpolation_loss({}, clips, jax.random.key(0), model=model, config=InterpolationTrainingConfig(),
                     null_embedding=NULL)
  np.testing.assert_array_equal(model.seen["context_length"], np.repeat(lengths, G))
