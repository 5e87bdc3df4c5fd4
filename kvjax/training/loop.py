"""The train loop of `python -m train` and what keeps it honest: a step whose loss or gradient norm is not
finite is found and stopped on or skipped (counted), never saved; a resumed checkpoint must hold a data
position and finite values; metrics.jsonl is cut back to the resumed step. What a log step writes also goes
to TensorBoard with the throughput and the devices' memory (kvjax.training.watch), and validation videos are
made between steps (kvjax.training.validation)."""

from __future__ import annotations

import json
import math
import os
import time

# The pairs of metrics a train step checks: a loss and the norm of its gradient.
_WATCHED = (("loss", "grad_norm"), ("discriminator_loss", "discriminator_grad_norm"))

# With --nonfinite skip, this many skipped steps in a row stop the run all the same: something other than
# a bad batch (the weights, the frozen encoders, the learning rate) is broken, and training has stopped anyway.
MAX_SKIPPED_IN_A_ROW = 100


def _number(value: float) -> str:
  return "NaN" if math.isnan(value) else f"{value:.6g}"  # inf, -inf as Python spells them


def _what_is_nonfinite(values: dict[str, float]) -> str:
  """'the loss is NaN (grad norm inf)', from one step's metrics."""
  parts = []
  for loss, norm in _WATCHED:
    if loss not in values:
      continue
    loss_value, norm_value = values[loss], values.get(norm, 0.0)
    loss_name, norm_name = loss.replace("_", " "), norm.replace("_", " ")
    if not math.isfinite(loss_value):
      parts.append(f"the {loss_name} is {_number(loss_value)} ({norm_name} {_number(norm_value)})")
    elif not math.isfinite(norm_value):
      parts.append(f"the {norm_name} is {_number(norm_value)} ({loss_name} {_number(loss_value)})")
  return ", ".join(parts) or "a loss or gradient norm is not finite"


def _nonfinite_steps(pending) -> list[tuple[int, str]]:
  """(step, what) for each step of `pending` [(step, metrics)] that the compiled step flagged as non-finite.
  The flags stay on the device until here, a log or checkpoint step, where the loop reads the metrics anyway:
  no step waits for the host in between."""
  flags = [float(metrics.get("nonfinite", 0.0)) for _, metrics in pending]
  return [(step, _what_is_nonfinite({k: float(v) for k, v in metrics.items()}))
          for (step, metrics), flag in zip(pending, flags) if flag]


def _finite_checkpoint_note(checkpoints) -> str:
  checkpoints.wait()  # a save still being written completes (or its failure is named) first
  last = checkpoints.latest_step()
  return f"the last checkpoint (step {last}) holds finite weights" if last is not None else "no checkpoint was written"


def train_loop(config, trainer, inputs, checkpoints, step: int, state, *, say=lambda *a: None, metrics_file=None,
               skipped: int = 0, events=None, validate=None, validate_every: int = 0, progress=None,
               devices=()) -> int:
  """Trains from `step` to `config.total_steps`: logs every log_every steps, saves every checkpoint_every
  (and at the end); returns the last step. `events` (a watch.EventLog) gets each log step's metrics as
  train/NAME, the clips per second and seconds per step since the previous log step (validation time
  excluded; the first interval includes the step's compile) and `devices`' memory where the backend reports
  it. `validate(step, state)` runs every `validate_every` steps and at the end; it only reads the state.
  `progress` (a watch.ProgressBar) is updated after each step. A step flagged non-finite (its update already
  dropped in the compiled step) is found at the next log or checkpoint step, before anything is saved: with
  `config.optimizer.nonfinite` "stop" the loop exits (SystemExit naming the step), with "skip" it warns and
  counts it (`skipped_steps` in the log records and the checkpoint's data state), up to MAX_SKIPPED_IN_A_ROW
  steps in a row."""
  from kvjax.training.train_state import nonfinite_paths
  from kvjax.training.watch import device_memory
  policy = config.optimizer.nonfinite
  pending = []  # (step, metrics) since the last check; the metrics stay device values until then
  in_a_row = 0
  start = time.perf_counter()
  last_log = (step, start)  # the throughput is measured between log steps
  while step < config.total_steps:
    batch = inputs.next_batch(step)
    state, metrics = trainer.step(state, batch)
    step += 1
    pending.append((step, metrics))
    if progress is not None:
      progress.update(step)
    log = step % config.log_every == 0 or step == config.total_steps
    save = step % config.checkpoint_every == 0 or step == config.total_steps
    validation = validate is not None and (step % validate_every == 0 or step == config.total_steps)
    if not (log or save or validation):
      continue
    checked = [pending_step for pending_step, _ in pending]
    bad, pending = _nonfinite_steps(pending), []
    bad_steps = {bad_step for bad_step, _ in bad}
    for checked_step in checked:
      in_a_row = in_a_row + 1 if checked_step in bad_steps else 0
    if bad and policy == "stop":
      (first, what), more = bad[0], len(bad) - 1
      later = f" (and {more} later step{'s' * (more != 1)} up to step {step})" if more else ""
      raise SystemExit(f"error: step {first}: {what}{later}; stopped before updating; "
                       f"{_finite_checkpoint_note(checkpoints)}; run the same command with --nonfinite skip to "
                       "skip such steps instead")
    for bad_step, what in bad:
      skipped += 1
      say(f"WARNING: step {bad_step}: {what}; skipped its update ({skipped} step{'s' * (skipped != 1)} skipped "
          "so far)")
    if in_a_row >= MAX_SKIPPED_IN_A_ROW:
      raise SystemExit(f"error: step {step}: the last {in_a_row} steps were all skipped (non-finite: "
                       f"{bad[-1][1]}); stopped, as no step trains; {_finite_checkpoint_note(checkpoints)}")
    if log:
      record = {"step": step, **{k: float(v) for k, v in metrics.items() if k != "nonfinite"},
                **({"skipped_steps": skipped} if policy == "skip" else {}),
                "seconds": round(time.perf_counter() - start, 3)}
      say(" ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
      if metrics_file:
        try:
          metrics_file.write(json.dumps(record) + "\n")
          metrics_file.flush()
        except OSError as e:
          raise SystemExit(f"error: step {step}: writing {metrics_file.name} failed ({e.strerror or e}); "
                           f"{_finite_checkpoint_note(checkpoints)}")
      now = time.perf_counter()
      if events is not None:
        steps, seconds = step - last_log[0], max(now - last_log[1], 1e-9)
        events.scalars(step, {**{f"train/{k}": v for k, v in record.items() if k not in ("step", "seconds")},
                              "perf/clips_per_second": steps * config.global_batch_size / seconds,
                              "perf/step_seconds": seconds / steps, **device_memory(devices)})
      last_log = (step, now)
    if save:
      bad_paths = nonfinite_paths(state)  # never true after a guarded step; the checkpoints' last line of defence
      if bad_paths:
        raise SystemExit(f"error: step {step}: the train state holds non-finite values ({', '.join(bad_paths[:3])}"
                         f"{', ...' if len(bad_paths) > 3 else ''}); not saved; {_finite_checkpoint_note(checkpoints)}")
      # The data position: global batches read, the same on every host and for any number of hosts.
      checkpoints.save(step, state, {"global_batches": inputs.global_batches, "skipped_steps": skipped},
                       force=step == config.total_steps)
    if validation:
      began = time.perf_counter()
      try:
        validate(step, state)
      except OSError as e:  # OutputError names the folder
        raise SystemExit(f"error: step {step}: writing the validation videos failed ({e}); "
                         f"{_finite_checkpoint_note(checkpoints)}")
      last_log = (last_log[0], last_log[1] + time.perf_counter() - began)
  return step


def resume_check(inputs):
  """`check(state, data_state)` for restore_latest: the checkpoint must hold a data position (which it
  applies to `inputs`) and finite values only. A checkpoint of an older kvjax holds each host's grain state
  instead: it read one global batch per step, so its step is its position."""
  from kvjax.training.train_state import nonfinite_paths

  def check(state, data_state):
    if not isinstance(data_state, dict) or not ("global_batches" in data_state or "clips" in data_state):
      raise ValueError("its data state has no data position")
    position = data_state["global_batches"] if "global_batches" in data_state else int(state.step)
    inputs.start_at(position)  # ValueError: not a count, or past the data's end
    bad = nonfinite_paths(state)
    if bad:
      raise ValueError(f"non-finite values in {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}")

  return check


def metrics_log(workdir: str, resumed_step: int, say=lambda *a: None):
  """metrics.jsonl, cut back to the resumed step (a killed run may have logged steps it did not save), open
  for appending. Lines that do not read as records (a run killed while writing one) are dropped, with a
  warning."""
  path = os.path.join(workdir, "metrics.jsonl")
  kept, dropped = [], 0
  if os.path.isfile(path):
    with open(path, errors="replace") as f:
      for line in f:
        if not line.strip():
          continue
        try:
          step = json.loads(line)["step"]
          step = int(step) if isinstance(step, int) else None
        except (ValueError, KeyError, TypeError):
          step = None
        if step is None:
          dropped += 1
        elif step <= resumed_step:
          kept.append(line if line.endswith("\n") else line + "\n")
  if dropped:
    say(f"WARNING: {path}: dropped {dropped} unreadable line{'s' * (dropped != 1)} (a record cut short when a run "
        "was killed)")
  with open(path + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)
  return open(path, "a")
