"""Sharded training on 8 simulated devices: equivalence with one device, real sharding, frozen weights."""

import flax.linen as nn
import flax.traverse_util
import jax
import numpy as np
import pytest

from kvjax import configs
from kvjax.params import abstract_params, build_model, random_params
from kvjax.training.keyframe_loss import KeyframeTrainingConfig, keyframe_loss
from kvjax.training.mesh import make_mesh, parse_mesh
from kvjax.training.partitioning import batch_sharding, param_shardings, replicated
from kvjax.training.optimizer import OptimizerConfig, make_optimizer
from kvjax.training.train_state import create_state, jit_train_step, make_train_step, state_shardings
from kvjax.training.trainable import count_trainable, trainable_mask

CFG = configs.KEYFRAME_TINY


def test_mesh_strings():
  assert parse_mesh("data=2,fsdp=2,tensor=2") == {"data": 2, "fsdp": 2, "tensor": 2}
  assert parse_mesh("fsdp=8") == {"data": 1, "fsdp": 8, "tensor": 1}
  for bad in ("data=2,data=2", "model=2", "data=0", "data"):
    with pytest.raises(ValueError, match="mesh"):
      parse_mesh(bad)
  with pytest.raises(ValueError, match="8 are available"):
    make_mesh("data=3")


@pytest.mark.parametrize("config,expected", [(configs.KEYFRAME_1_1, 1_110_490_752 + 15_744),
                                             (configs.INTERPOLATION_1_1, 938_649_228 + 2_688_002 + 34_752 + 20_748)])
def test_trainable_parameters_are_the_temporal_parts(config, expected):
  # spec §10: temporal layers incl. their embeddings, plus the new input (and interpolation output) layers
  params = nn.unbox(abstract_params(config))
  assert count_trainable(params, trainable_mask(params, config.kind)) == expected


def _batch(b=4, t=2, size=8, length=5):
  rng = np.random.default_rng(0)
  mask = np.zeros((b, length), bool)
  mask[:, :3] = True
  return {"latents": rng.normal(size=(b, t, size, size, 4)).astype(np.float32),
          "context": rng.normal(size=(b, length, CFG.context_dim)).astype(np.float32),
          "context_mask": mask, "motion_score": np.array([1, 10, 50, 100][:b], np.int32)}


def _run(mesh, steps=2):
  params = random_params(CFG, seed=1)
  initial = jax.tree.map(np.asarray, params)  # the step donates its state
  trainable = trainable_mask(params, CFG.kind)
  opt_cfg = OptimizerConfig(learning_rate=1e-3, warmup_steps=1, decay_steps=10, ema_decay=0.5)
  optimizer = make_optimizer(opt_cfg, trainable)
  model = build_model(CFG)
  null = np.full((CFG.context_dim,), 0.3, np.float32)
  loss_fn = lambda p, batch, rng: keyframe_loss(p, batch, rng, model=model, config=KeyframeTrainingConfig(),
                                                null_embedding=null, activation_sharding=batch_sharding(mesh))
  shardings = state_shardings(abstract_params(CFG), optimizer, mesh, ema=True)
  state = jax.device_put(create_state(params, optimizer, ema=True), shardings)
  step = jit_train_step(make_train_step(loss_fn, optimizer, opt_cfg, trainable, seed=7), shardings, mesh)
  losses = []
  for _ in range(steps):
    state, metrics = step(state, _batch())
    losses.append(float(metrics["loss"]))
  return initial, state, losses, metrics


# FSDP and tensor parallelism together (the sharding of every weight's two large axes).
SHARDED_MESH = "fsdp=4,tensor=2"


@pytest.fixture(scope="module")
def runs():
  assert jax.device_count() == 8
  return _run(make_mesh(SHARDED_MESH)), _run(make_mesh("", jax.devices()[:1]))


def test_sharded_step_equals_single_device_step(runs):
  (_, sharded, sharded_losses, metrics), (_, single, single_losses, _) = runs
  np.testing.assert_allclose(sharded_losses, single_losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(sharded.params), jax.tree.leaves(single.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)  # Adam amplifies ulps
  assert int(sharded.step) == 2 and float(metrics["grad_norm"]) > 0 and float(metrics["learning_rate"]) > 0


def test_parameters_are_sharded_as_the_rules_say(runs):
  state = runs[0][1]
  flat = flax.traverse_util.flatten_dict(state.params)
  kernel = flat[("in_layer", "kernel")]  # (3, 3, conv_in 9, conv_out 8): conv_out -> tensor, 9 stays whole
  assert tuple(kernel.sharding.spec) == (None, None, None, "tensor")
  assert kernel.addressable_shards[0].data.shape == (3, 3, 9, 4)
  ff = flat[("down_samples_2", "resnet_attn_blocks_0_1", "feed_forward_2", "kernel")]  # (1, 1, mlp 64, 32)
  assert tuple(ff.sharding.spec) == (None, None, "tensor", "fsdp") and ff.addressable_shards[0].data.shape == (1, 1, 32, 8)
  sharded = [path for path, leaf in flat.items() if any(leaf.sharding.spec)]
  assert len(sharded) > len(flat) // 2
  # optimiser moments follow their parameters
  mu = [leaf for leaf in jax.tree.leaves(state.opt_state) if getattr(leaf, "shape", ()) == kernel.shape]
  assert mu and all(tuple(m.sharding.spec) == tuple(kernel.sharding.spec) for m in mu)


def test_only_trainable_parameters_move(runs):
  initial, state = runs[0][0], runs[0][1]
  trainable = flax.traverse_util.flatten_dict(trainable_mask(initial, CFG.kind))
  before, after = flax.traverse_util.flatten_dict(initial), flax.traverse_util.flatten_dict(state.params)
  moved = {path for path in before if not np.array_equal(np.asarray(before[path]), np.asarray(after[path]))}
  assert moved and all(trainable[path] for path in moved)
  assert ("in_layer", "kernel") in moved and ("image_in_layer", "kernel") not in moved


@pytest.mark.xfail(strict=True, reason="open: on a mesh with all three axes > 1 (data=2,fsdp=2,tensor=2) the CPU "
                   "backend's sharded UNet forward disagrees with the unsharded one (~50% max error), while "
                   "fsdp=4,tensor=2, data=4,tensor=2, data=2,fsdp=4 and 1-axis meshes agree to 2e-6")
def test_three_axis_mesh_forward_matches_one_device():
  params = random_params(CFG, seed=1)
  model = build_model(CFG)
  rng = np.random.default_rng(0)
  x, context = rng.normal(size=(8, 8, 8, 9)).astype(np.float32), rng.normal(size=(8, 5, 48)).astype(np.float32)
  forward = lambda p, x: model.apply({"params": p}, x, np.full((8,), 500.0, np.float32), context,
                                     np.ones((8, 5), bool), input_layer="video")
  mesh = make_mesh("data=2,fsdp=2,tensor=2")
  sharded = jax.jit(forward, in_shardings=(param_shardings(abstract_params(CFG), mesh), batch_sharding(mesh)),
                    out_shardings=replicated(mesh))(params, x)
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(jax.jit(forward)(params, x)), rtol=1e-4, atol=1e-4)
