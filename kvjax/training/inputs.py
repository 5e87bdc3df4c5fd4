"""What the train step eats, from clips: frames become latents through the frozen image MoVQ encoder (and
the weights folder's latent normalization, where it has one), captions become text context through the tokenizer, the frozen T5 encoder and the projection head.

Clips come from the prepared dataset (`kvjax.data.loader`, grain) or, for smoke runs and benchmarks, from
`SyntheticClips` (random frames and captions, clearly not data). Every source reads the same global batches
whatever the number of hosts, and can start at any global batch; so the data position a checkpoint stores
is the number of global batches read, and a run resumed from it, on any number of hosts, reads exactly the
batches the uninterrupted run would have.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from kvjax.models.latent_normalization import normalize
from kvjax.params import abstract_params, build_model
from kvjax.pipeline.pipeline_weights import PipelineWeights
from kvjax.text.conditioning import project_context
from kvjax.training.train_config import TrainConfig
from kvjax.training.movq_gan import frames_to_unit_range
from kvjax.sharding import batch_sharding, host_batch_rows, param_shardings, replicated

# --data values that name generated clips rather than a folder.
GENERATED_SOURCES = ("synthetic", "shapes")

SYNTHETIC_WORDS = ("a red fox runs through snow waves roll at sunset city lights blink over a busy street "
                   "clouds drift above green hills").split()


class SyntheticClips:
  """Random clips (uniform uint8 frames, captions of random words, motion scores): exercises the whole
  training path without a dataset. Row i of global batch n comes from (seed, n, i) alone and a host makes
  its `rows` (default the block of shard_index), as `ShapeClips`: the global batch is the same however many
  hosts read it."""

  def __init__(self, batch_size: int, num_frames: int, resolution: tuple[int, int], seed: int,
               shard_index: int = 0, rows=None, start_batch: int = 0):
    self.batch_size, self.num_frames, self.resolution = batch_size, num_frames, tuple(resolution)
    self.seed, self.position = seed, start_batch
    self.rows = tuple(range(shard_index * batch_size, (shard_index + 1) * batch_size) if rows is None else rows)

  def __iter__(self):
    return self

  def _row(self, index: int) -> dict[str, Any]:
    rng = np.random.default_rng([self.seed, self.position, index])
    t, (h, w) = self.num_frames, self.resolution
    return {"frames": rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8),
            "caption": " ".join(rng.choice(SYNTHETIC_WORDS, size=6)), "motion_score": rng.uniform(0, 100)}

  def __next__(self) -> dict[str, Any]:
    rows = [self._row(i) for i in self.rows]
    self.position += 1
    return {"frames": np.stack([r["frames"] for r in rows]), "caption": np.array([r["caption"] for r in rows]),
            "motion_score": np.array([r["motion_score"] for r in rows], np.float32)}


def select_interpolation_frames(frames: np.ndarray, config: TrainConfig, step: int, rows):
  """Per clip, a skip value s from the config's choices and every n-th frame from the clip's start, n its
  source spacing (s + 1 unless the config says otherwise): frames (B, F, ...) -> ((B, 4G + 1, ...), skip (B,)).
  Drawn per global row of the step (`rows`: this host's): resumes exactly, and the same whatever the number
  of hosts."""
  choices = np.asarray(config.interpolation.skip_frames, np.int32)
  spacing = dict(zip(config.interpolation.skip_frames, config.interpolation.spacings))
  skips = np.array([np.random.default_rng([config.seed, step, row, 1]).choice(choices) for row in rows], np.int32)
  indices = np.arange(config.clip_frames)[None, :] * np.array([spacing[s] for s in skips])[:, None]
  return np.take_along_axis(frames, indices.reshape(indices.shape + (1,) * (frames.ndim - 2)), axis=1), skips


class ClipEncoder:
  """Frames (uint8) and captions -> latents, context and mask, with the frozen models sharded on `mesh`."""

  def __init__(self, config: TrainConfig, weights: PipelineWeights, tokenizer, mesh: Mesh):
    pipeline = config.pipeline_config
    self.config, self.tokenizer = config, tokenizer
    movq, t5 = build_model(pipeline.image_movq), build_model(pipeline.text_encoder)
    frozen = {"movq": weights.image_movq, "t5": weights.text_encoder, "projections": weights.projections,
              "latents": weights.latent_normalization}
    shardings = {"movq": param_shardings(abstract_params(pipeline.image_movq), mesh),
                 "t5": param_shardings(abstract_params(pipeline.text_encoder), mesh),
                 "projections": param_shardings(abstract_params(pipeline.projections), mesh),
                 "latents": replicated(mesh)}
    self.frozen = jax.device_put(jax.tree.map(np.asarray, frozen), shardings)  # from host: no per-shape reshards
    self.sharding = batch_sharding(mesh)

    def encode(frozen, frames, input_ids, attention_mask):
      b, t, h, w, c = frames.shape
      pixels = frames_to_unit_range(frames.reshape(b * t, h, w, c))
      latents = normalize(frozen["latents"], movq.apply({"params": frozen["movq"]}, pixels, method="encode"))
      hidden = t5.apply({"params": frozen["t5"]}, input_ids, attention_mask)
      context = project_context(frozen["projections"], hidden, attention_mask, config=pipeline.projections)
      return latents.reshape(b, t, *latents.shape[1:]), context, attention_mask.astype(bool)

    self._encode = jax.jit(encode, in_shardings=(shardings, self.sharding, self.sharding, self.sharding),
                           out_shardings=self.sharding)

  def encode(self, frames: np.ndarray, captions) -> dict[str, jax.Array]:
    """This host's frames (B, F, H, W, 3) uint8 and captions -> global latents, context and mask."""
    tokens = self.tokenizer([str(c) for c in captions])
    to_global = lambda x: global_array(self.sharding, x)
    latents, context, mask = self._encode(self.frozen, to_global(frames), to_global(tokens.input_ids),
                                          to_global(tokens.attention_mask))
    return {"latents": latents, "context": context, "context_mask": mask}


def global_array(sharding, local) -> jax.Array:
  """This host's rows -> the global array split as `sharding` says (every host passes its own rows)."""
  return jax.make_array_from_process_local_data(sharding, np.asarray(local))


def conditioning(config: TrainConfig, examples: dict[str, Any], step: int, rows):
  """This host's clip frames or latents (B, F, ...) -> (those the objective sees, its per-clip inputs)."""
  frames = np.asarray(examples["frames" if "frames" in examples else "latents"])
  if config.is_movq:
    return frames, {}
  if config.model == "keyframe":
    return frames, {"motion_score": np.asarray(examples["motion_score"], np.float32)}
  frames, skips = select_interpolation_frames(frames, config, step, rows)
  return frames, {"skip_frames": skips}


class StepInputs:
  """`next_batch(step)`: the global batch of a step, from clips encoded on the fly or from pre-computed
  inputs. `global_batches` (the batches read so far: a checkpoint's data position) and `start_at(n)` (read
  on from global batch n) are the same on every host and for any number of hosts."""

  def __init__(self, config: TrainConfig, open_reader, encoder: ClipEncoder | None, sharding, rows):
    # open_reader(n): an iterator over this host's rows of global batches n, n + 1, ...
    self.config, self.open_reader, self.encoder, self.sharding = config, open_reader, encoder, sharding
    self.rows = tuple(rows)  # this host's rows of the global batch
    self.start_at(0)

  def start_at(self, global_batches: int) -> None:
    if isinstance(global_batches, bool) or not isinstance(global_batches, int) or global_batches < 0:
      raise ValueError(f"a data position must be a number of global batches, got {global_batches!r}")
    self.reader, self.global_batches = self.open_reader(global_batches), global_batches

  def next_batch(self, step: int) -> dict[str, jax.Array]:
    examples = next(self.reader)
    self.global_batches += 1
    selected, extra = conditioning(self.config, examples, step, self.rows)
    to_global = lambda x: global_array(self.sharding, x)
    if self.config.is_movq:  # the MoVQ trains on the frames themselves
      batch = {"frames": to_global(selected)}
    elif self.encoder is not None:
      batch = self.encoder.encode(selected, examples["caption"])
    else:
      batch = {"latents": to_global(selected), "context": to_global(examples["context"]),
               "context_mask": to_global(examples["context_mask"])}
    return {**batch, **{k: to_global(v) for k, v in extra.items()}}


def step_inputs(config: TrainConfig, data: str, *, weights: PipelineWeights | None, tokenizer, mesh: Mesh,
                local_batch_size: int, shard_index: int, shard_count: int, worker_count: int = 0) -> StepInputs:
  """Inputs from `data`: a prepared dataset folder, a pre-computed inputs folder (`python -m
  train.precompute`, UNets only), or "synthetic". MoVQs need no `weights` or `tokenizer` (they eat frames).
  Each host reads the rows of the global batch its devices hold (`host_batch_rows`)."""
  from kvjax.training.precomputed import META, make_precomputed_loader
  rows = host_batch_rows(batch_sharding(mesh), local_batch_size * shard_count)
  if len(rows) != local_batch_size:
    raise ValueError(f"this host's devices hold {len(rows)} rows of the global batch, not {local_batch_size}")
  precomputed = data not in GENERATED_SOURCES and os.path.isfile(os.path.join(data, META))
  if config.is_movq:
    if precomputed:
      raise ValueError("pre-computed inputs hold latents for the UNets; a MoVQ trains on a prepared dataset")
    clips = lambda start: clip_reader(config, data, local_batch_size, shard_index, shard_count, worker_count,
                                      rows=rows, start_batch=start)
    return StepInputs(config, clips, None, batch_sharding(mesh), rows)
  if precomputed:
    normalization = None if weights is None else weights.latent_normalization
    inputs = lambda start: iter(make_precomputed_loader(
        data, config, batch_size=local_batch_size, shard_index=shard_index, shard_count=shard_count,
        worker_count=worker_count, normalization=normalization, rows=rows, start_batch=start))
    return StepInputs(config, inputs, None, batch_sharding(mesh), rows)
  clips = lambda start: clip_reader(config, data, local_batch_size, shard_index, shard_count, worker_count,
                                    rows=rows, start_batch=start)
  return StepInputs(config, clips, ClipEncoder(config, weights, tokenizer, mesh), batch_sharding(mesh), rows)


def clip_reader(config: TrainConfig, data: str, local_batch_size: int, shard_index: int, shard_count: int,
                worker_count: int = 0, shuffle: bool = True, num_epochs: int | None = None,
                rows=None, start_batch: int = 0) -> Iterator[dict[str, Any]]:
  """The clips of `data`: a prepared dataset folder, "synthetic" (random pixels) or "shapes" (the moving
  shapes of `kvjax.data.shapes`, rendered on the fly), from global batch `start_batch`. `rows`: this host's
  rows of each global batch of local_batch_size x shard_count (default: the block of shard_index)."""
  frames = config.loader_frames
  if data == "synthetic":
    return SyntheticClips(local_batch_size, frames, config.resolution, config.seed, shard_index, rows=rows,
                          start_batch=start_batch)
  if data == "shapes":
    from kvjax.data.shapes import ShapeClips
    return ShapeClips(local_batch_size, frames, config.resolution, config.seed, shard_index=shard_index,
                      shard_count=shard_count, rows=rows, start_batch=start_batch)
  from kvjax.data.loader import make_clip_loader
  loader = make_clip_loader(data, batch_size=local_batch_size, num_frames=frames, resolution=config.resolution,
                            seed=config.seed, frame_stride=config.frame_stride, shard_index=shard_index,
                            shard_count=shard_count, worker_count=worker_count, shuffle=shuffle,
                            num_epochs=num_epochs, rows=rows, start_batch=start_batch,
                            window_start=config.clip_start)
  return iter(loader)
