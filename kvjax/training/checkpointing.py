"""Training checkpoints with orbax: asynchronous saves, the last N kept, exact resume.

A checkpoint holds the train state (sharded arrays, written by every host in parallel) and the input
pipeline's position (JSON). The step's randomness is fold_in(seed, step), so state + data position is all a
resumed run needs to continue the same loss curve. orbax writes each step into a temporary folder and
renames it when complete, so a run killed mid-save restores the last complete checkpoint.

A complete checkpoint can still be damaged afterwards (a truncated array file, a lost metadata or data-state
file, a half-copied folder): `restore_latest` then falls back to the newest one that restores, renames each
newer damaged folder STEP to STEP.damaged (kept for inspection; orbax ignores it) and warns naming it. When
none restores it raises CheckpointError naming every step and why, and renames nothing. Failed saves (a full
disk) raise CheckpointError naming the step and the last complete checkpoint.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

# UNet runs keep the null embedding they train with beside the checkpoints (it does not train), so that
# `python -m train.export` can write a complete converted UNet.
NULL_EMBEDDING = "null_embedding.npy"
DAMAGED_SUFFIX = ".damaged"


class CheckpointError(ValueError):
  """A checkpoint folder that cannot be used, read or written; the message names it and why, in one line."""


def error_reason(e: BaseException, limit: int = 300) -> str:
  """One line for an exception: the innermost cause's first line (orbax wraps tensorstore's precise error in
  a vague one whose message spans hundreds of lines of JSON spec)."""
  chain = []
  while e is not None and all(e is not c for c in chain) and len(chain) < 16:
    chain.append(e)
    e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
  for candidate in reversed(chain):
    line = (str(candidate).strip().splitlines() or [""])[0].split(" [tensorstore_spec", 1)[0].strip()
    if line:
      return line if len(line) <= limit else line[:limit - 3] + "..."
  return type(chain[-1]).__name__ if chain else "unknown error"


def _hosts_agree(ok: bool) -> bool:
  """True where every host's `ok` is (one host's damaged shard makes the checkpoint unusable for all)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.asarray(ok, np.int32))))


def _from_orbax_or_asyncio(unraisable) -> bool:
  """Whether an unraisable error comes from orbax's reads: raised in orbax or asyncio code, or pending in an
  orbax coroutine collected unfinished (whose traceback may hold no orbax frame)."""
  codes = [getattr(unraisable.object, "cr_code", None)]
  tb = unraisable.exc_value.__traceback__ if unraisable.exc_value is not None else None
  while tb is not None:
    codes.append(tb.tb_frame.f_code)
    tb = tb.tb_next
  names = [code.co_filename.replace(os.sep, "/") for code in codes if code is not None]
  return any("/orbax/" in name or "/asyncio/" in name for name in names)


def _quiet_abandoned_reads() -> None:
  """Silences what a failed sharded restore leaves behind. orbax reads the shards of an array concurrently in an
  event loop that closes at the first failure; the other reads then finish into the closed loop ("Event loop is
  closed") or are collected unfinished, and Python prints each as an "Exception ignored" traceback of dozens of
  lines. The failure itself is reported by `restore_latest` in one line; other unraisable errors pass through.
  The filter stays installed (once per process): the abandoned reads finish in orbax's threads, possibly long
  after the restore has returned, so a filter removed on return races them."""
  previous = sys.unraisablehook
  if getattr(previous, "_drops_abandoned_reads", False):
    return

  def hook(unraisable):
    if not _from_orbax_or_asyncio(unraisable):
      previous(unraisable)

  hook._drops_abandoned_reads = True
  sys.unraisablehook = hook


class _OrbaxSaveTracebacks(logging.Filter):
  """Drops orbax's own log of a failed save, a traceback of dozens of lines: orbax raises the same error where
  the save is waited on, and `TrainCheckpoints` reports it there in one line (CheckpointError)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and record.exc_info
                and "/orbax/checkpoint/" in record.pathname.replace(os.sep, "/"))


class TrainCheckpoints:
  """`save(step, state, data_state)` (async), `restore_latest(abstract_state) -> (step, state, data_state)`."""

  def __init__(self, directory: str, keep: int = 3, save_every: int = 1000, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    if os.path.lexists(self.directory) and not os.path.isdir(self.directory):
      raise CheckpointError(f"{self.directory} is a file, not a folder of checkpoints: move it aside")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every, create=True,
                                           enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))
    except OSError as e:
      raise CheckpointError(f"{self.directory}: cannot open the checkpoints folder ({error_reason(e)})") from e
    self._pending: int | None = None  # the step of the save that may still be writing
    self._quiet_saves = _OrbaxSaveTracebacks()
    logging.getLogger("absl").addFilter(self._quiet_saves)  # orbax logs through absl's logger

  def save(self, step: int, state, data_state: dict[str, Any], force: bool = False) -> bool:
    """Starts writing (returns at once when async); False where the save interval skips this step. A failed
    write (this one or the previous, still asynchronous one) raises CheckpointError."""
    previous = self._pending
    try:
      saved = self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                               data=ocp.args.JsonSave(data_state)), force=force)
    except Exception as e:  # orbax re-raises the background writer's error here, or its own
      failed = previous if previous is not None and previous not in self.all_steps() else step
      raise self._save_error(failed, e) from e
    if saved:
      self._pending = step
    return saved

  def _save_error(self, step: int | None, e: BaseException) -> CheckpointError:
    self._pending = None
    steps = self.all_steps()
    last = f"the last complete checkpoint is step {max(steps)}" if steps else "no checkpoint is complete"
    what = "a checkpoint" if step is None else f"the checkpoint of step {step}"
    return CheckpointError(f"writing {what} in {self.directory} failed ({error_reason(e)}); {last}")

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def restore(self, step: int, abstract_state):
    """The state at `step`, placed as `abstract_state`'s shardings say (ShapeDtypeStructs with shardings).
    A checkpoint that cannot be read raises CheckpointError naming its folder and the first problem."""
    try:
      return self._restore(step, abstract_state)
    except Exception as e:  # orbax and tensorstore raise bare Exceptions, ValueErrors, OSErrors...
      raise CheckpointError(f"{self.step_folder(step)}: {error_reason(e)}") from e

  def _restore(self, step: int, abstract_state):
    _quiet_abandoned_reads()
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored.state, restored.data

  def step_folder(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def restore_latest(self, abstract_state, check: Callable[[Any, Any], None] | None = None,
                     warn: Callable[[str], None] = lambda message: None):
    """(step, state, data_state) of the newest checkpoint that restores and passes `check(state, data_state)`
    (which raises ValueError to refuse one, e.g. for non-finite weights); (None, None, None) where there is
    none. Newer checkpoints that fail are renamed STEP.damaged and `warn` names each; where every one fails,
    CheckpointError lists them all and nothing is renamed."""
    failures = []
    for step in sorted(self.all_steps(), reverse=True):
      state = data = None
      try:
        state, data = self._restore(step, abstract_state)
        problem = None
      except Exception as e:  # orbax and tensorstore raise bare Exceptions, ValueErrors, OSErrors...
        problem = error_reason(e)
      if not _hosts_agree(problem is None):
        problem = problem or "another host could not read it"
      if problem is None and check is not None:  # every host or none: the check may run collectives
        try:
          check(state, data)
        except ValueError as e:
          problem = error_reason(e)
        if not _hosts_agree(problem is None):
          problem = problem or "another host refused it"
      if problem is None:
        for bad_step, why in failures:
          aside = self._set_aside(bad_step)
          warn(f"WARNING: the checkpoint of step {bad_step} is damaged ({self.step_folder(bad_step)}: {why}); "
               f"renamed it {aside} (kept, not used) and resumed from step {step}")
        if failures:
          self._manager.reload()
        return step, state, data
      del state, data
      failures.append((step, problem))
    if failures:
      listed = "; ".join(f"step {s}: {why}" for s, why in failures)
      raise CheckpointError(f"no checkpoint in {self.directory} can be restored ({listed}); nothing was renamed or "
                            f"deleted: to start afresh, move {self.directory} aside or use a new --workdir")
    return None, None, None

  def _set_aside(self, step: int) -> str:
    """Renames the folder of `step` to STEP.damaged (STEP.damaged-2, ... if taken); returns the new path."""
    source = self.step_folder(step)
    target, n = source + DAMAGED_SUFFIX, 1
    while os.path.lexists(target):
      n += 1
      target = f"{source}{DAMAGED_SUFFIX}-{n}"
    if jax.process_index() == 0:
      os.rename(source, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"kvjax set aside checkpoint {step}")
    return target

  def wait(self) -> None:
    """Blocks until the pending save is on disk; CheckpointError where it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise self._save_error(self._pending, e) from e
    self._pending = None

  def close(self) -> None:
    try:
      self._manager.close()
    except Exception as e:
      raise self._save_error(self._pending, e) from e
    finally:
      logging.getLogger("absl").removeFilter(self._quiet_saves)


def abstract_with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs that carry the target shardings, for `restore`."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)
