"""A training run's compiled pieces: the model and its objective, the optimisers, the shardings of the state
and the batch, and the jit-compiled step. One design for every model: `UNetTrainer` (keyframe and
interpolation UNets, a diffusion objective) and `MoVQTrainer` (the MoVQ and a discriminator, a GAN) share
placement, lowering, batching and the train loop of `python -m train`."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from kvjax import model_configs
from kvjax.models.lora import abstract_adapters, init_adapters, join, merge, with_lora
from kvjax.params import abstract_params, build_model
from kvjax.training.checkpointing import abstract_with_shardings
from kvjax.training.train_config import COMPUTE_DTYPES, TrainConfig
from kvjax.training.inputs import global_array
from kvjax.training.interpolation_loss import interpolation_loss
from kvjax.training.keyframe_loss import keyframe_image_loss, keyframe_loss
from kvjax.training.movq_gan import GANState, make_gan_losses, make_gan_train_step
from kvjax.training.optimizer import make_optimizer
from kvjax.sharding import batch_sharding, param_shardings, replicated
from kvjax.training.train_state import TrainState, create_state, jit_train_step, make_train_step, state_shardings
from kvjax.training.trainable import trainable_mask, training_recipe


def abstract_batch(config: TrainConfig) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch the step takes: UNets get encoded latents, text context and per-clip conditioning;
  MoVQs get the frames themselves (uint8)."""
  b, (h, w) = config.global_batch_size, config.latent_size
  if config.is_movq:
    return {"frames": jax.ShapeDtypeStruct((b, config.num_frames, *config.resolution, 3), jnp.uint8)}
  pipeline = config.pipeline_config
  batch = {
      "latents": jax.ShapeDtypeStruct((b, config.clip_frames, h, w, pipeline.image_movq.z_channels), jnp.float32),
      "context": jax.ShapeDtypeStruct((b, pipeline.tokens_length, config.model_config.context_dim), jnp.float32),
      "context_mask": jax.ShapeDtypeStruct((b, pipeline.tokens_length), jnp.bool_),
  }
  if config.model == "keyframe":
    batch["motion_score"] = jax.ShapeDtypeStruct((b,), jnp.float32)
  else:
    batch["skip_frames"] = jax.ShapeDtypeStruct((b,), jnp.int32)
  return batch


class _Trainer:
  """What every recipe shares. A recipe sets `config`, `mesh`, `shardings` (of the state), `_create`
  (initial parameters -> state), `_initial` (boxed abstract initial parameters), `_compiled` (the jitted
  step) and `frozen` (its third argument: weights that do not train, or None)."""

  config: TrainConfig
  mesh: Mesh
  shardings: Any
  _create: Callable
  _initial: Any
  _compiled: Any
  frozen: Any = None

  def _finish(self, step_fn, frozen=None, frozen_shardings=None):
    """`frozen` may be abstract (ShapeDtypeStructs): the trainer then lowers but does not step."""
    self.batch_sharding = batch_sharding(self.mesh)
    abstract = any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(frozen))
    on_host = lambda a: a if isinstance(a, jax.Array) else np.asarray(a)  # device arrays stay where they are
    self.frozen = frozen if frozen is None or abstract else jax.device_put(jax.tree.map(on_host, frozen),
                                                                            frozen_shardings)
    self._compiled = jit_train_step(step_fn, self.shardings, self.mesh,
                                    None if frozen is None else frozen_shardings)

  def _frozen_args(self, frozen=None) -> tuple:
    return () if self.frozen is None else (self.frozen if frozen is None else frozen,)

  def step(self, state, batch):
    """`(state, batch) -> (state, metrics)`, compiled once; `state` is donated."""
    return self._compiled(state, batch, *self._frozen_args())

  def abstract_state(self):
    """The state's shapes and dtypes (no memory), e.g. to restore a checkpoint or lower the step."""
    return jax.eval_shape(self._create, nn.unbox(self._initial))

  def init_state(self, params):
    """A fresh state from the initial parameters (host or device arrays), placed as the rules say.

    The parameters go to their shards straight from host memory and the optimiser state is made in one
    compiled call: resharding device arrays leaf by leaf would compile a slicing program per shape. Device
    arrays already in float32 on their shards (training's `--init` loads them so) are taken as they are.
    """
    shardings = param_shardings(self._initial, self.mesh)
    host = jax.tree.map(lambda p, s: p if isinstance(p, jax.Array) and p.dtype == jnp.float32 and p.sharding == s
                        else np.asarray(p, np.float32), params, shardings)
    placed = jax.device_put(host, shardings)
    return jax.jit(self._create, out_shardings=self.shardings)(placed)

  def lower(self):
    """The step lowered on abstract inputs (compile it for its memory analysis without any weights)."""
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding)
             for k, v in abstract_batch(self.config).items()}
    frozen = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), self.frozen)
    return self._compiled.lower(abstract_with_shardings(self.abstract_state(), self.shardings), batch,
                                *self._frozen_args(frozen))

  def global_batch(self, local_batch: dict[str, Any]) -> dict[str, jax.Array]:
    """This host's slice of the batch (numpy) -> global arrays split over (fsdp, data)."""
    return {k: global_array(self.batch_sharding, v) for k, v in local_batch.items()}


class UNetTrainer(_Trainer):
  """The keyframe or interpolation UNet with its diffusion objective; the initial parameters are the UNet's.

  A LoRA run (`config.lora.rank` > 0) trains adapters alone: the state's parameters (and optimiser moments
  and EMA) are the float32 adapters, and the UNet's weights, `base` (in `config.lora.base_dtype`, sharded by
  the rule table), are the step's frozen third argument. `base` None (export, compile-only lowering) gives a
  trainer that restores and lowers but does not step."""

  def __init__(self, config: TrainConfig, mesh: Mesh, null_embedding, base=None):
    self.config, self.mesh = config, mesh
    unet, lora = config.model_config, config.lora
    compute_dtype = COMPUTE_DTYPES[config.compute_dtype]
    self.model = build_model(unet, dtype=compute_dtype, remat=config.remat)
    if lora.enabled:
      self.model = with_lora(self.model, lora)
      self._initial = abstract_adapters(unet, lora)
      self.trainable = jax.tree.map(lambda _: True, nn.unbox(self._initial))
    else:
      self._initial = abstract_params(unet)
      self.trainable = trainable_mask(nn.unbox(self._initial), training_recipe(config))
    self.optimizer = make_optimizer(config.optimizer, self.trainable)
    ema = config.optimizer.ema_decay > 0
    self.shardings: TrainState = state_shardings(self._initial, self.optimizer, mesh, ema=ema)
    self._create = lambda params: create_state(params, self.optimizer, ema)
    objective = {"keyframe": keyframe_image_loss if config.keyframe.mode == "image" else keyframe_loss,
                 "interpolation": interpolation_loss}[config.model]
    loss_fn = functools.partial(objective, config=getattr(config, config.model),
                                null_embedding=np.asarray(null_embedding, np.float32),
                                activation_sharding=batch_sharding(mesh))
    if not lora.enabled:
      self._finish(make_train_step(functools.partial(loss_fn, model=self.model), self.optimizer, config.optimizer,
                                   self.trainable, seed=config.seed))
      return
    base_shardings = param_shardings(abstract_params(unet), mesh)
    step = make_train_step(_lora_loss(loss_fn, self.model, compute_dtype, lora.dropout), self.optimizer,
                           config.optimizer, self.trainable, seed=config.seed)
    dtype = jnp.dtype(lora.base_dtype)
    if base is None:
      base = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=sharding),
                          nn.unbox(abstract_params(unet)), base_shardings)
    else:
      base = frozen_base(base, base_shardings, dtype)
    self._finish(step, base, base_shardings)
    self._merged = jax.jit(lambda base, adapters: merge(base, adapters, lora.scale, jnp), out_shardings=base_shardings)

  def init_state(self, params):
    """A fresh state from the UNet's parameters; a LoRA run's holds fresh adapters instead (A drawn from the
    run's seed, B zero: the UNet's own output), its base UNet having been given at construction."""
    if self.config.lora.enabled:
      params = init_adapters(self._initial, self.config.lora, self.config.seed)
    return super().init_state(params)

  def unet_weights(self, params):
    """The UNet's weights of a state's parameters: the adapters merged into the base for a LoRA run."""
    return self._merged(self.frozen, params) if self.config.lora.enabled else params


def frozen_base(base, shardings, dtype):
  """A LoRA run's frozen UNet in `dtype` on `shardings` (the rule table's). Device arrays (training's `--init`
  loads the UNet onto the mesh) are cast where they lie, in one compiled call under those shardings, and never
  cross to the host; host arrays are cast on the host, then placed (half the bytes cross for bfloat16)."""
  if not all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(base)):
    return jax.device_put(jax.tree.map(lambda p: np.asarray(p).astype(dtype), base), shardings)
  cast = jax.jit(lambda tree: jax.tree.map(lambda p: p.astype(dtype), tree), out_shardings=shardings)
  return cast(jax.device_put(base, shardings))


def _lora_loss(objective, model, compute_dtype, dropout: float):
  """`objective` of (adapters, batch, rng, base): the wrapped model on the base joined with the adapters, these
  cast to the compute type (float32 masters, as the base's own kernels are cast by their layers). Dropout
  draws from the step's rng folded with 1, so the objective's own draws are those of a run without adapters."""
  def loss(adapters, batch, rng, base):
    adapters = jax.tree.map(lambda a: a.astype(compute_dtype), adapters)
    run = model
    if dropout > 0:
      run = _WithRngs(model, {"dropout": jax.random.fold_in(rng, 1)})
    return objective(join(base, adapters), batch, rng, model=run)
  return loss


class _WithRngs:
  """A module whose `apply` gets `rngs` (the objectives call `model.apply(variables, ...)`)."""

  def __init__(self, model, rngs):
    self.model, self.rngs = model, rngs

  def apply(self, *args, **kwargs):
    return self.model.apply(*args, rngs=self.rngs, **kwargs)


def discriminator_config(config: TrainConfig) -> model_configs.DiscriminatorConfig:
  return model_configs.PRESETS[config.movq.discriminator]


class MoVQTrainer(_Trainer):
  """The MoVQ (generator) and a discriminator trained together; initial parameters
  {"generator": MoVQ params, "discriminator": discriminator params}. `lpips_params` (for the config's
  LPIPS preset) turn the perceptual term on; None leaves it off."""

  def __init__(self, config: TrainConfig, mesh: Mesh, lpips_params=None):
    self.config, self.mesh = config, mesh
    dtype = COMPUTE_DTYPES[config.compute_dtype]
    movq_config, disc_config = config.model_config, discriminator_config(config)
    self.generator = build_model(movq_config, dtype=dtype, remat=config.remat)
    self.discriminator = build_model(disc_config, dtype=dtype)
    self.perceptual = perceptual = lpips_params is not None and config.movq.perceptual_weight > 0
    lpips = frozen_shardings = None
    if perceptual:
      from kvjax.models.lpips import LPIPS, LPIPS_PRESETS
      lpips = LPIPS(LPIPS_PRESETS[config.movq.lpips], dtype=dtype)
      frozen_shardings = param_shardings(abstract_params(LPIPS_PRESETS[config.movq.lpips]), mesh)

    boxed = {"generator": abstract_params(movq_config), "discriminator": abstract_params(disc_config)}
    self._initial = boxed
    self.trainable = trainable_mask(nn.unbox(boxed["generator"]), training_recipe(config))
    disc_trainable = jax.tree.map(lambda _: True, nn.unbox(boxed["discriminator"]))
    self.optimizer = make_optimizer(config.optimizer, self.trainable)
    self.discriminator_optimizer = make_optimizer(config.movq.discriminator_optimizer, disc_trainable)
    ema = config.optimizer.ema_decay > 0
    self.shardings = GANState(state_shardings(boxed["generator"], self.optimizer, mesh, ema=ema),
                              state_shardings(boxed["discriminator"], self.discriminator_optimizer, mesh, ema=False),
                              replicated(mesh))
    self._create = lambda p: GANState(create_state(p["generator"], self.optimizer, ema),
                                      create_state(p["discriminator"], self.discriminator_optimizer, False),
                                      jnp.zeros((2,), jnp.float32))

    pin = functools.partial(jax.lax.with_sharding_constraint, shardings=batch_sharding(mesh))
    generator_loss, discriminator_loss = make_gan_losses(
        config.movq, movq=self.generator, discriminator=self.discriminator, lpips=lpips,
        video=config.model == "video_movq", pin=pin)
    step = make_gan_train_step(config.movq, generator_loss=generator_loss, discriminator_loss=discriminator_loss,
                               generator_optimizer=self.optimizer,
                               discriminator_optimizer=self.discriminator_optimizer,
                               generator_optimizer_config=config.optimizer, trainable=self.trainable)
    self._finish(step, {"lpips": lpips_params if perceptual else None}, {"lpips": frozen_shardings})


def make_trainer(config: TrainConfig, mesh: Mesh, *, null_embedding=None, lpips_params=None, base=None) -> _Trainer:
  """`base`: a LoRA run's UNet weights (UNetTrainer)."""
  if config.is_movq:
    return MoVQTrainer(config, mesh, lpips_params)
  return UNetTrainer(config, mesh, null_embedding, base)
