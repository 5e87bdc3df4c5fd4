"""Converted checkpoints on disk: an orbax PyTree checkpoint plus `config.json`, written atomically.

Layout of a converted folder:
  config.json   {"format": "kvjax-converted", "kind": ..., "config": {...}, "dtype": ..., "source": ...}
  state/        orbax checkpoint of {"params": <Flax tree>, <extras such as "null_embedding">}
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from kvjax import model_configs
from kvjax.atomic import staged

FORMAT = "kvjax-converted"

# Bytes orbax may hold in flight while writing or reading. Its defaults (tens of GB) let it stage a copy of
# the whole model, doubling peak memory; with a small bound, jax-array leaves and no compression (weights
# barely compress) the extra memory of a save is about one tensor.
_CONCURRENT_GB = 1


def _checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(
      save_concurrent_gb=_CONCURRENT_GB, restore_concurrent_gb=_CONCURRENT_GB,
      save_device_host_concurrent_gb=_CONCURRENT_GB, use_compression=False))


@dataclasses.dataclass
class ConvertedModel:
  kind: str
  config: Any
  params: dict[str, Any]
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)


def _dtype_name(tree) -> str:
  dtypes = sorted({np.dtype(leaf.dtype).name for leaf in jax.tree.leaves(tree)})
  return dtypes[0] if len(dtypes) == 1 else ",".join(dtypes)


def save_converted(model: ConvertedModel, out_dir: str | os.PathLike, *, source: str = "",
                   overwrite: bool = False) -> str:
  """Writes `model` to `out_dir`; on any failure nothing is left behind (the folder appears whole or not)."""
  with staged(out_dir, overwrite=overwrite) as staging:
    with _checkpointer() as checkpointer:
      checkpointer.save(os.path.join(staging, "state"), {"params": model.params, **model.extras})
    meta = {"format": FORMAT, "kind": model.kind, "config": model.config.to_dict(),
            "dtype": _dtype_name(model.params), "extras": sorted(model.extras), "source": source}
    with open(os.path.join(staging, "config.json"), "w") as f:
      json.dump(meta, f, indent=1)
  out_dir = os.path.abspath(os.fspath(out_dir))
  return out_dir


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
  config_path = os.path.join(os.fspath(path), "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{path}: not a converted kvjax checkpoint (no config.json)")
  with open(config_path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT or meta.get("kind") not in model_configs.CONFIG_TYPES:
    raise ValueError(f"{config_path}: not a kvjax converted-checkpoint description")
  return meta


def load_converted(path: str | os.PathLike) -> ConvertedModel:
  """Restores a converted folder as numpy arrays (place them on devices with `jax.device_put`)."""
  meta = read_metadata(path)
  config = model_configs.CONFIG_TYPES[meta["kind"]].from_dict(meta["config"])
  with _checkpointer() as checkpointer:
    state_path = os.path.join(os.path.abspath(os.fspath(path)), "state")
    metadata = checkpointer.metadata(state_path)
    tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(state_path, restore_args=restore_args)
  params = state.pop("params")
  return ConvertedModel(meta["kind"], config, params, state)
