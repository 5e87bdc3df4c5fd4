"""Pre-computed training inputs: the frozen encoders run once over a prepared dataset, and training reads
latents and text context instead of frames and captions (what large runs do: the T5 encoder alone is 8.6B
parameters).

On disk: ArrayRecord shards of `.npz` records (numpy arrays only, read with allow_pickle=False) holding
`latents` (F, h, w, 4) float32, `context` (L, D) float32, `context_mask` (L,) bool, `motion_score` ()
float32, and `meta.json`, which names the settings the inputs were made for; training refuses others.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import grain
import jax
import numpy as np

from kvjax.atomic import staged
from kvjax.data.loader import sharded_batches
from kvjax.models.latent_normalization import LatentNormalization, as_json
from kvjax.training.train_config import TrainConfig

META = "meta.json"
RECORD_KEYS = ("latents", "context", "context_mask", "motion_score")


def input_settings(config: TrainConfig, normalization: LatentNormalization | None = None) -> dict[str, Any]:
  """What pre-computed inputs depend on: frozen models, frame count and spacing, resolution, and the
  weights folder's latent normalization (the latents are stored normalized)."""
  return {"pipeline": config.pipeline, "frames": config.loader_frames, "frame_stride": config.frame_stride,
          "clip_start": config.clip_start,
          "resolution": list(config.resolution), "latent_normalization": as_json(normalization)}


def encode_record(example: dict[str, np.ndarray]) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **{k: np.asarray(example[k]) for k in RECORD_KEYS})
  return buffer.getvalue()


def decode_record(record: bytes) -> dict[str, np.ndarray]:
  with np.load(io.BytesIO(record), allow_pickle=False) as arrays:
    return {k: arrays[k] for k in RECORD_KEYS}


def write_precomputed(out_dir: str, config: TrainConfig, batches, *, records_per_shard: int = 256,
                      overwrite: bool = False, normalization: LatentNormalization | None = None) -> int:
  """Writes the encoded `batches` (dicts of global arrays as `ClipEncoder` returns, plus motion_score; their
  latents normalized by `normalization`); all or nothing: the folder appears only when every shard is
  written. Returns the number of records."""
  from array_record.python.array_record_module import ArrayRecordWriter
  count = 0
  with staged(out_dir, overwrite=overwrite) as staging:
    writer, shard = None, 0
    for batch in batches:
      host = {k: np.asarray(jax.device_get(v)) for k, v in batch.items()}
      for i in range(host["latents"].shape[0]):
        if writer is None or count % records_per_shard == 0:
          if writer is not None:
            writer.close()
          writer = ArrayRecordWriter(os.path.join(staging, f"inputs-{shard:05d}.array_record"), "group_size:1")
          shard += 1
        writer.write(encode_record({k: v[i] for k, v in host.items()}))
        count += 1
    if writer is not None:
      writer.close()
    with open(os.path.join(staging, META), "w") as f:
      json.dump({**input_settings(config, normalization), "records": count}, f, indent=1)
  return count


def check_precomputed(folder: str, config: TrainConfig, normalization: LatentNormalization | None = None) -> dict[str, Any]:
  path = os.path.join(folder, META)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{folder}: no {META}; make pre-computed inputs with `python -m train.precompute`")
  with open(path) as f:
    meta = json.load(f)
  wanted = input_settings(config, normalization)
  differ = sorted(k for k in wanted if meta.get(k) != wanted[k])
  if differ:
    raise ValueError(f"{folder} was made for other settings: " +
                     ", ".join(f"{k} {meta.get(k)} (this run needs {wanted[k]})" for k in differ))
  return meta


class _Decode(grain.transforms.Map):
  def map(self, row: dict) -> dict[str, np.ndarray]:
    return decode_record(row["record"])


def make_precomputed_loader(folder: str, config: TrainConfig, *, batch_size: int, shard_index: int,
                            shard_count: int, worker_count: int = 0, normalization: LatentNormalization | None = None,
                            rows=None, start_batch: int = 0):
  """A grain loader over pre-computed inputs: shuffled with the run's seed, repeating, each host its shard;
  refused where they were made for other settings (`normalization`: the run's weights folder's)."""
  meta = check_precomputed(folder, config, normalization)
  paths = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".array_record"))
  source = grain.sources.ArrayRecordDataSource(paths)
  return sharded_batches(source, _Decode(), f"{folder}: {meta['records']} records", batch_size=batch_size,
                         seed=config.seed, shuffle=True, num_epochs=None, shard_index=shard_index,
                         shard_count=shard_count, worker_count=worker_count, rows=rows, start_batch=start_batch)
