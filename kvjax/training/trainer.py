"""A training run's compiled pieces: the model and its objective, the optimiser, the shardings of the state
and the batch, and the jit-compiled step."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from kvjax.params import abstract_params, build_model
from kvjax.training.checkpointing import abstract_with_shardings
from kvjax.training.config import COMPUTE_DTYPES, TrainConfig
from kvjax.training.inputs import global_array
from kvjax.training.interpolation_loss import interpolation_loss
from kvjax.training.keyframe_loss import keyframe_loss
from kvjax.training.optimizer import make_optimizer
from kvjax.training.partitioning import batch_sharding
from kvjax.training.train_state import TrainState, create_state, jit_train_step, make_train_step, state_shardings
from kvjax.training.trainable import trainable_mask


def abstract_batch(config: TrainConfig) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch the step takes: encoded latents and text context, and per-clip conditioning."""
  b, (h, w) = config.global_batch_size, config.latent_size
  pipeline = config.pipeline_config
  batch = {
      "latents": jax.ShapeDtypeStruct((b, config.clip_frames, h, w, pipeline.image_movq.z_channels), jnp.float32),
      "context": jax.ShapeDtypeStruct((b, pipeline.tokens_length, config.unet_config.context_dim), jnp.float32),
      "context_mask": jax.ShapeDtypeStruct((b, pipeline.tokens_length), jnp.bool_),
  }
  if config.model == "keyframe":
    batch["motion_score"] = jax.ShapeDtypeStruct((b,), jnp.float32)
  else:
    batch["skip_frames"] = jax.ShapeDtypeStruct((b,), jnp.int32)
  return batch


class Trainer:
  """`trainer.step(state, batch) -> (state, metrics)`, compiled once, sharded on `mesh` by the rule table."""

  def __init__(self, config: TrainConfig, mesh: Mesh, null_embedding):
    self.config, self.mesh = config, mesh
    unet = config.unet_config
    self.model = build_model(unet, dtype=COMPUTE_DTYPES[config.compute_dtype], remat=config.remat)
    self.boxed_abstract_params = abstract_params(unet)
    self.trainable = trainable_mask(nn.unbox(self.boxed_abstract_params), unet.kind)
    self.optimizer = make_optimizer(config.optimizer, self.trainable)
    self.ema = config.optimizer.ema_decay > 0
    self.shardings: TrainState = state_shardings(self.boxed_abstract_params, self.optimizer, mesh, ema=self.ema)
    self.batch_sharding = batch_sharding(mesh)
    objective = keyframe_loss if config.model == "keyframe" else interpolation_loss
    loss_fn = functools.partial(objective, model=self.model, config=getattr(config, config.model),
                                null_embedding=np.asarray(null_embedding, np.float32),
                                activation_sharding=self.batch_sharding)
    self.step = jit_train_step(make_train_step(loss_fn, self.optimizer, config.optimizer, self.trainable,
                                               seed=config.seed), self.shardings, mesh)

  def abstract_state(self) -> TrainState:
    """The state's shapes and dtypes (no memory), e.g. to restore a checkpoint or lower the step."""
    return jax.eval_shape(lambda p: create_state(p, self.optimizer, self.ema), nn.unbox(self.boxed_abstract_params))

  def init_state(self, params) -> TrainState:
    """A fresh state from `params` (host or device arrays), placed as the rules say.

    The parameters go to their shards straight from host memory and the optimiser state is made in one
    compiled call: resharding device arrays leaf by leaf would compile a slicing program per shape.
    """
    host = jax.tree.map(lambda p: np.asarray(p, np.float32), params)
    placed = jax.device_put(host, self.shardings.params)
    return jax.jit(lambda p: create_state(p, self.optimizer, self.ema), out_shardings=self.shardings)(placed)

  def lower(self):
    """The step lowered on abstract inputs (compile it for its memory analysis without any weights)."""
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding)
             for k, v in abstract_batch(self.config).items()}
    return self.step.lower(abstract_with_shardings(self.abstract_state(), self.shardings), batch)

  def global_batch(self, local_batch: dict[str, Any]) -> dict[str, jax.Array]:
    """This host's slice of the batch (numpy) -> global arrays split over (fsdp, data)."""
    return {k: global_array(self.batch_sharding, v) for k, v in local_batch.items()}
