"""MoVQ-GAN training on 8 simulated devices: the sharded step equals one device for both recipes, the
state is split as the rules say, frozen parts never move, temporal layers start at identity, and the
adaptive weight is the ratio of the output layer's gradient norms."""

import dataclasses

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax import model_configs
from kvjax.models.movq import MoVQ
from kvjax.params import abstract_params, build_model, random_params
from kvjax.training import gan_losses
from kvjax.training.train_config import TRAIN_PRESETS
from kvjax.sharding import make_mesh
from kvjax.training.movq_gan import MoVQTrainingConfig, identity_temporal_layers, make_gan_losses, perturb_latents
from kvjax.training.trainer import MoVQTrainer, abstract_batch, discriminator_config
from kvjax.training.starting_weights import lpips_weights, movq_start

SHARDED_MESH = "data=2,fsdp=2,tensor=2"


def _config(preset, **movq):
  config = TRAIN_PRESETS[preset]
  return dataclasses.replace(config, global_batch_size=4, num_frames=config.num_frames if config.num_frames > 1 else 2,
                             resolution=(16, 16), movq=dataclasses.replace(config.movq, r1_weight=0.1,
                                                                           lecam_weight=0.1, **movq))


def _run(config, mesh, steps=2, remat="none"):
  config = dataclasses.replace(config, remat=remat)
  start, _ = movq_start(config, None)
  initial = jax.tree.map(np.asarray, start)
  trainer = MoVQTrainer(config, mesh, lpips_params=lpips_weights(config, "random"))
  state = trainer.init_state(start)
  rng = np.random.default_rng(0)
  batch = {"frames": rng.integers(0, 256, abstract_batch(config)["frames"].shape).astype(np.uint8)}
  metrics = []
  for _ in range(steps):
    state, m = trainer.step(state, trainer.global_batch(batch))
    metrics.append({k: float(v) for k, v in m.items()})
  return initial, state, metrics


# The video recipe's sharded step (temporal layers, the 3D discriminator) is slow-marked: the GAN CLI test
# runs it on the same 8-device mesh, killed and resumed.
@pytest.fixture(scope="module", params=["image-movq-tiny", pytest.param("video-movq-tiny", marks=pytest.mark.slow)])
def runs(request):
  assert jax.device_count() == 8
  config = _config(request.param)
  # The one-device run recomputes every level backwards: rematerialisation must not change the result.
  return config, _run(config, make_mesh(SHARDED_MESH)), _run(config, make_mesh("", jax.devices()[:1]), remat="levels")


def test_sharded_gan_step_equals_single_device_step(runs):
  config, (_, sharded, sharded_metrics), (_, single, single_metrics) = runs
  for a, b in zip(sharded_metrics, single_metrics):
    for key in ("loss", "nll", "rec_perceptual", "discriminator_loss", "logits_real", "logits_fake",
                "adaptive_weight", "grad_norm", "discriminator_grad_norm"):
      np.testing.assert_allclose(a[key], b[key], rtol=2e-4, atol=1e-6, err_msg=key)
  pairs = [(sharded.generator.params, single.generator.params), (sharded.generator.ema_params, single.generator.ema_params),
           (sharded.discriminator.params, single.discriminator.params), (sharded.lecam_ema, single.lecam_ema)]
  # Adam's first steps move every weight by about lr * sign(gradient): where a gradient is within rounding
  # of zero, the two layouts may move it opposite ways. So: all but 2 in 10^3 agree to 2e-5, and none
  # differs by more than those steps could make.
  lr, close, count = config.optimizer.learning_rate, 0, 0
  for tree_a, tree_b in pairs:
    for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
      diff = np.abs(np.asarray(a) - np.asarray(b))
      close, count = close + np.sum(diff <= 2e-5 + 1e-4 * np.abs(np.asarray(b))), count + diff.size
      assert diff.max() <= 2 * lr * len(single_metrics)
  assert close / count >= 0.998, close / count
  last = sharded_metrics[-1]
  assert last["discriminator_factor"] == 1 and last["rec_perceptual"] > 0 and last["discriminator_grad_norm"] > 0
  assert int(sharded.step) == 2 and float(jnp.abs(sharded.lecam_ema).sum()) > 0


def test_generator_and_discriminator_state_are_sharded_as_the_rules_say(runs):
  state = runs[1][1]
  generator = flax.traverse_util.flatten_dict(state.generator.params)
  kernel = generator[("decoder", "up_0", "block_1", "conv1", "kernel")]  # (3, 3, conv_in 32, conv_out 32)
  assert tuple(kernel.sharding.spec) == (None, None, "fsdp", "tensor")
  assert kernel.addressable_shards[0].data.shape == (3, 3, 16, 16)
  disc = flax.traverse_util.flatten_dict(state.discriminator.params)
  assert any(tuple(leaf.sharding.spec) == (*(None,) * (leaf.ndim - 2), "fsdp", "tensor") for leaf in disc.values())
  for tree in (state.generator.opt_state, state.discriminator.opt_state):  # moments follow their parameters
    moments = [leaf for leaf in jax.tree.leaves(tree) if getattr(leaf, "ndim", 0) >= 4]
    assert moments and any(tuple(m.sharding.spec)[-2:] == ("fsdp", "tensor") for m in moments)


def test_frozen_parts_never_move(runs):
  config, (initial, state, _), _ = runs
  before = flax.traverse_util.flatten_dict(initial["generator"])
  after = flax.traverse_util.flatten_dict(state.generator.params)
  moved = {"/".join(p) for p in before if not np.array_equal(before[p], np.asarray(after[p]))}
  if config.model == "image_movq":  # the whole autoencoder trains
    assert any(p.startswith("encoder/") for p in moved) and any(p.startswith("decoder/") for p in moved)
  else:  # encoder and quant conv frozen; of the decoder only its temporal layers
    assert moved and all(p.startswith("decoder/") and "temporal_" in p for p in moved)
    assert any("temporal_merge" in p for p in moved)
  discriminator = flax.traverse_util.flatten_dict(initial["discriminator"])
  assert all(not np.array_equal(v, np.asarray(flax.traverse_util.flatten_dict(state.discriminator.params)[p]))
             for p, v in discriminator.items() if p[-1] == "kernel")


def test_without_a_gan_term_the_discriminator_rests():
  # adversarial_weight 0 (a reconstruction recipe such as the demo's decoder stages): neither network runs the
  # discriminator, which keeps its weights; the generator still learns.
  config = dataclasses.replace(_config("image-movq-tiny", adversarial_weight=0.0), global_batch_size=2)
  initial, state, metrics = _run(config, make_mesh("", jax.devices()[:1]), steps=2)  # step 0: warm-up rate 0
  same = lambda a, b: jax.tree.all(jax.tree.map(lambda x, y: np.array_equal(x, np.asarray(y)), a, b))
  assert same(initial["discriminator"], state.discriminator.params)
  assert not same(initial["generator"], state.generator.params)
  assert int(state.discriminator.step) == 2 and metrics[-1]["discriminator_loss"] == 0 and np.isfinite(metrics[-1]["loss"])


def test_decoder_robustness_perturbs_each_frames_latents_within_its_bounds():
  # MoVQTrainingConfig.latent_contrast and latent_noise: a frame's latent keeps 1 - U[0, contrast] of its
  # deviation from its spatial mean and gains noise of std U[0, noise]; the draws follow the step (a resumed
  # step repeats them).
  latents = jnp.asarray(np.random.default_rng(0).normal(size=(64, 4, 4, 4)), jnp.float32)
  deviation = lambda z: z - jnp.mean(z, axis=(1, 2), keepdims=True)
  faint = MoVQTrainingConfig(train_scope="decoder", latent_contrast=0.4)
  out = perturb_latents(latents, 7, faint)
  kept = np.asarray(jnp.sum(deviation(out) * deviation(latents), axis=(1, 2, 3)) /
                    jnp.sum(deviation(latents) ** 2, axis=(1, 2, 3)))
  assert 0.6 <= kept.min() < kept.max() <= 1.0 and kept.max() - kept.min() > 0.2  # per frame, spread over the range
  np.testing.assert_allclose(np.asarray(jnp.mean(out, axis=(1, 2))), np.asarray(jnp.mean(latents, axis=(1, 2))), atol=1e-5)
  noisy = MoVQTrainingConfig(train_scope="decoder", latent_noise=0.3)
  error = np.asarray(jnp.std(perturb_latents(latents, 7, noisy) - latents, axis=(1, 2, 3)))
  assert error.max() < 0.45 and error.max() - error.min() > 0.1
  np.testing.assert_array_equal(np.asarray(perturb_latents(latents, 7, noisy)), np.asarray(perturb_latents(latents, 7, noisy)))
  assert not np.array_equal(np.asarray(perturb_latents(latents, 8, noisy)), np.asarray(perturb_latents(latents, 7, noisy)))
  with pytest.raises(ValueError, match="train_scope 'decoder'"):
    MoVQTrainingConfig(latent_noise=0.1)
  with pytest.raises(ValueError, match="latent_contrast"):
    MoVQTrainingConfig(train_scope="decoder", latent_contrast=1.0)


def test_video_decoder_starts_as_the_image_decoder():
  image_config, video_config = model_configs.IMAGE_MOVQ_TINY, model_configs.VIDEO_MOVQ_TINY
  image_params = random_params(image_config, 3)
  video_params = identity_temporal_layers(image_params, abstract_params(video_config))
  latents = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4, 4, 4)), jnp.float32)
  image = MoVQ(image_config).apply({"params": image_params}, latents, 1, method="decode")
  video = MoVQ(video_config).apply({"params": video_params}, latents, 3, "own", method="decode")
  np.testing.assert_allclose(np.asarray(video), np.asarray(image), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="no counterpart"):
    identity_temporal_layers({}, abstract_params(video_config))


def test_adaptive_weight_is_the_ratio_of_output_layer_gradient_norms():
  config = _config("image-movq-tiny").movq
  movq, disc_config = build_model(model_configs.IMAGE_MOVQ_TINY), discriminator_config(_config("image-movq-tiny"))
  discriminator = build_model(disc_config)
  params, disc_params = random_params(model_configs.IMAGE_MOVQ_TINY, 0), random_params(disc_config, 1)
  frames = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 1, 16, 16, 3)), jnp.float32)
  generator_loss, _ = make_gan_losses(config, movq=movq, discriminator=discriminator, lpips=None, video=False)
  _, (metrics, fake) = generator_loss(params, disc_params, None, frames, 0)

  def terms(p):  # the same losses through the whole model, differentiated by the output layer's kernel
    rec = movq.apply({"params": p}, frames[:, 0], 1)  # each image decoded alone, as the image recipe
    nll = config.l1_weight * jnp.mean(jnp.abs(frames[:, 0] - rec))
    return nll, gan_losses.hinge_generator_loss(discriminator.apply({"params": disc_params}, rec))

  kernel = lambda g: g["decoder"]["conv_out"]["kernel"]
  nll_grad = kernel(jax.grad(lambda p: terms(p)[0])(params))
  adv_grad = kernel(jax.grad(lambda p: terms(p)[1])(params))
  expected = config.adversarial_weight * jnp.linalg.norm(nll_grad) / (jnp.linalg.norm(adv_grad) + 1e-4)
  np.testing.assert_allclose(float(metrics["adaptive_weight"]), float(expected), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(fake[:, 0]), np.asarray(movq.apply({"params": params}, frames[:, 0], 1)),
                             rtol=1e-5, atol=1e-6)


def test_trainable_counts_of_the_production_recipes():
  from kvjax.training.trainable import count_trainable, trainable_mask, training_recipe
  params = nn.unbox(abstract_params(model_configs.VIDEO_MOVQ_1_1))
  count = lambda preset, **kw: count_trainable(params, trainable_mask(params, training_recipe(
      dataclasses.replace(TRAIN_PRESETS[preset], movq=dataclasses.replace(TRAIN_PRESETS[preset].movq, **kw)))))
  decoder = sum(leaf.size for path, leaf in flax.traverse_util.flatten_dict(params).items()
                if path[0] in ("decoder", "post_quant_conv"))
  assert count("video-movq-1.1", train_scope="decoder") == decoder
  image = count_trainable(params, jax.tree.map(lambda _: True, params)) - count("video-movq-1.1")
  assert image == 270_603_567  # the temporal layers are exactly what the video file adds to the image MoVQ


def test_the_image_recipe_learns_to_reconstruct_moving_shapes():
  # A behaviour, not only a run: 40 steps on rendered shapes at 16x16 halve the reconstruction error of
  # held-out frames (the curve's numbers at the bench's scale are in bench/movq_learning.py).
  from kvjax.data.shapes import ShapeClips
  config = dataclasses.replace(_config("image-movq-tiny"), global_batch_size=8, num_frames=1)
  start, _ = movq_start(config, None)
  trainer = MoVQTrainer(config, make_mesh("", jax.devices()[:1]))
  state = trainer.init_state(start)
  held_out = next(ShapeClips(8, 1, (16, 16), seed=99))["frames"]
  movq = build_model(model_configs.IMAGE_MOVQ_TINY)

  def error(params):
    x = jnp.asarray(held_out[:, 0], jnp.float32) / 255 * 2 - 1
    return float(jnp.mean(jnp.abs(jnp.clip(movq.apply({"params": params}, x, 1), -1, 1) - x)))

  before = error(start["generator"])
  clips = ShapeClips(8, 1, (16, 16), seed=0)
  for _ in range(40):
    state, metrics = trainer.step(state, trainer.global_batch({"frames": next(clips)["frames"]}))
  after = error(jax.tree.map(np.asarray, state.generator.params))
  assert np.isfinite(float(metrics["loss"])) and after < 0.5 * before, (before, after)
