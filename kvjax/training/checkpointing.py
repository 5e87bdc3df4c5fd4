"""Training checkpoints with orbax: asynchronous saves, the last N kept, exact resume.

A checkpoint holds the train state (sharded arrays, written by every host in parallel) and the input
pipeline's position (JSON). The step's randomness is fold_in(seed, step), so state + data position is all a
resumed run needs to continue the same loss curve. orbax writes each step into a temporary folder and
renames it when complete, so a run killed mid-save restores the last complete checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

# UNet runs keep the null embedding they train with beside the checkpoints (it does not train), so that
# `python -m train.export` can write a complete converted UNet.
NULL_EMBEDDING = "null_embedding.npy"


class TrainCheckpoints:
  """`save(step, state, data_state)` (async), `restore_latest(abstract_state) -> (step, state, data_state)`."""

  def __init__(self, directory: str, keep: int = 3, save_every: int = 1000, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every, create=True,
                                           enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def save(self, step: int, state, data_state: dict[str, Any], force: bool = False) -> bool:
    """Starts writing (returns at once when async); False where the save interval skips this step."""
    return self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            data=ocp.args.JsonSave(data_state)), force=force)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore(self, step: int, abstract_state):
    """The state at `step`, placed as `abstract_state`'s shardings say (ShapeDtypeStructs with shardings)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                                   data=ocp.args.JsonRestore()))
    return restored.state, restored.data

  def restore_latest(self, abstract_state):
    step = self.latest_step()
    if step is None:
      return None, None, None
    state, data = self.restore(step, abstract_state)
    return step, state, data

  def wait(self) -> None:
    """Blocks until the pending save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def abstract_with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs that carry the target shardings, for `restore`."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
