"""Trains a UNet (keyframe, interpolation) or a MoVQ (image autoencoder, temporal video decoder; a GAN),
sharded over a device mesh, with checkpoints and exact resume.

  python -m train --config keyframe-tiny --mesh data=2,fsdp=2,tensor=2 --data synthetic --workdir runs/tiny
  python -m train --config keyframe-1.1 --mesh fsdp=64 --data prepared/ --weights converted/ --workdir runs/kf
  python -m train --config video-movq-1.1 --mesh fsdp=8 --data prepared/ --weights converted/ --lpips lpips/ \
      --workdir runs/decoder

Re-running the same command resumes from the last complete checkpoint in --workdir (same step, same data
position, same randomness); a damaged newest checkpoint is renamed STEP.damaged, with a warning, and the one
before it resumes. A step with a non-finite loss or gradient norm never updates the weights: the run stops
naming it (--nonfinite stop, the default; the checkpoints hold finite weights) or skips it and counts it
(--nonfinite skip). --data takes a folder written by `python -m train.prepare_data`, or
"synthetic" for random clips (a smoke test). Without --weights the frozen encoders and the UNet start from
RANDOM weights with a stand-in tokenizer. MoVQ runs take --weights as a converted MoVQ folder or a
`convert all` output, and --lpips as the output of `python -m convert lpips` (without it the perceptual
loss is off, and the run says so). On several hosts, start one process per host with
--coordinator, --num-processes and --process-id (or none of them where the cluster sets them up). A
checkpoint's data position is a count of global batches, so a run resumes on any number of hosts; when a
process dies, the others stop within --peer-timeout seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

from kvjax.training.train_config import COMPUTE_DTYPES, REMAT_POLICIES, TRAIN_PRESETS
from kvjax.training.inputs import GENERATED_SOURCES
from kvjax.training.movq_gan import INIT_FROM, TRAIN_SCOPES
from kvjax.training.optimizer import NONFINITE_POLICIES


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, choices=sorted(TRAIN_PRESETS), help="training preset")
  p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a field of the preset")
  p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl and config.json go here")
  p.add_argument("--mesh", default="", help="e.g. data=2,fsdp=2,tensor=2 (default: every device on data)")
  p.add_argument("--data", default="synthetic", help="prepared dataset folder, 'synthetic' (random pixels) or "
                 "'shapes' (moving shapes rendered on the fly)")
  p.add_argument("--weights", help="folder written by `python -m convert all` (default: random weights)")
  p.add_argument("--tokenizer", help="FLAN-UL2's spiece.model (default: WEIGHTS/spiece.model)")
  p.add_argument("--init", help="UNet runs: start the UNet (and its null embedding) from this converted folder, "
                 "e.g. a `python -m train.export` output, instead of WEIGHTS' own")
  p.add_argument("--lpips", help="MoVQ runs: LPIPS weights from `python -m convert lpips`, or 'random' (smoke "
                 "tests); default: no perceptual loss")
  p.add_argument("--train-scope", choices=TRAIN_SCOPES, help="video MoVQ: the temporal layers (default) or the "
                 "whole decoder")
  p.add_argument("--init-from", choices=INIT_FROM, help="video MoVQ: start from the image MoVQ (temporal layers "
                 "at identity; default) or from a converted video MoVQ")
  p.add_argument("--discriminator-start", type=int, help="MoVQ: steps of reconstruction alone before the GAN")
  p.add_argument("--steps", type=int, help="train until this step (default: the preset's total_steps)")
  p.add_argument("--batch-size", type=int, help="global batch size (clips per step over all hosts)")
  p.add_argument("--resolution", type=_size, metavar="HxW", help="frame size in pixels, e.g. 64x64")
  p.add_argument("--num-frames", type=int, help="frames per clip (keyframe and MoVQ runs)")
  p.add_argument("--learning-rate", type=float)
  p.add_argument("--nonfinite", choices=NONFINITE_POLICIES, help="a step whose loss or gradient norm is NaN or "
                 "infinite: 'stop' the run naming it (default), or 'skip' its update and train on (counted in "
                 "the metrics as skipped_steps); may change between runs of a workdir")
  p.add_argument("--compute-dtype", choices=sorted(COMPUTE_DTYPES))
  p.add_argument("--remat", choices=REMAT_POLICIES)
  p.add_argument("--checkpoint-every", type=int)
  p.add_argument("--keep-checkpoints", type=int)
  p.add_argument("--log-every", type=int)
  p.add_argument("--seed", type=int)
  p.add_argument("--data-workers", type=int, default=0, help="grain reader processes per host")
  p.add_argument("--coordinator", help="host:port of process 0, for multi-host runs")
  p.add_argument("--num-processes", type=int)
  p.add_argument("--process-id", type=int)
  p.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() with the cluster's own settings (TPU pods, SLURM)")
  p.add_argument("--peer-timeout", type=int, default=100, help="multi-host: seconds without a heartbeat after "
                 "which a process counts as dead; every other process then stops (exit 134) with JAX's message "
                 "naming it, instead of waiting in a collective for ever")
  return p


def _size(text: str) -> tuple[int, int]:
  height, sep, width = text.partition("x")
  if not sep or not height.isdigit() or not width.isdigit():
    raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 64x64, got {text!r}")
  return int(height), int(width)


def _train_config(args):
  from kvjax.training.overrides import apply_overrides
  config = apply_overrides(TRAIN_PRESETS[args.config], args.set)
  overrides = {"total_steps": args.steps, "global_batch_size": args.batch_size, "resolution": args.resolution,
               "num_frames": args.num_frames, "compute_dtype": args.compute_dtype,
               "remat": args.remat, "checkpoint_every": args.checkpoint_every,
               "keep_checkpoints": args.keep_checkpoints, "log_every": args.log_every, "seed": args.seed}
  config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
  optimizer = {"learning_rate": args.learning_rate, "nonfinite": args.nonfinite}
  optimizer = {k: v for k, v in optimizer.items() if v is not None}
  if optimizer:
    config = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer, **optimizer))
  movq = {"train_scope": args.train_scope, "init_from": args.init_from, "discriminator_start": args.discriminator_start}
  movq = {k: v for k, v in movq.items() if v is not None}
  if movq:
    if not config.is_movq:
      raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in movq)} apply to the MoVQ presets only")
    config = dataclasses.replace(config, movq=dataclasses.replace(config.movq, **movq))
  return config


def _check_same_run(workdir: str, config) -> None:
  """A workdir belongs to one run: resuming with other settings (the length and the non-finite policy aside)
  is refused. Settings a run saved before a field existed read as that field's default."""
  from kvjax.training.train_config import TrainConfig, config_from_dict
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    try:
      saved = dataclasses.asdict(config_from_dict(TrainConfig, json.load(f)))
    except (ValueError, TypeError) as e:
      raise RunRefused(f"{path}: not the settings of a run of this kvjax ({e}); use a new --workdir")
  current = dataclasses.asdict(config)
  for settings in (current, saved):  # both policies compile the same step: only the loop's reaction differs
    settings["optimizer"] = {k: v for k, v in settings["optimizer"].items() if k != "nonfinite"}
  changed = sorted(k for k in current if k != "total_steps" and current[k] != saved[k])
  if changed:
    raise RunRefused(f"{workdir} holds a run with other settings ({', '.join(changed)}); use a new --workdir")


def _write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


def _write_null_embedding(path: str, null) -> None:
  import numpy as np
  with open(path + ".tmp", "wb") as f:
    np.save(f, np.asarray(null, np.float32), allow_pickle=False)
  os.replace(path + ".tmp", path)


def _metrics_log(workdir: str, resumed_step: int, say=lambda *a: None):
  """metrics.jsonl, cut back to the resumed step (a killed run may have logged steps it did not save). Lines
  that do not read as records (a run killed while writing one) are dropped, with a warning."""
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


# The pairs of metrics a train step checks: a loss and the norm of its gradient.
_WATCHED = (("loss", "grad_norm"), ("discriminator_loss", "discriminator_grad_norm"))


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


# With --nonfinite skip, this many skipped steps in a row stop the run all the same: something other than
# a bad batch (the weights, the frozen encoders, the learning rate) is broken, and training has stopped anyway.
MAX_SKIPPED_IN_A_ROW = 100


def train_loop(config, trainer, inputs, checkpoints, step: int, state, *, say=lambda *a: None, metrics_file=None,
               skipped: int = 0) -> int:
  """Trains from `step` to `config.total_steps`: logs every log_every steps, saves every checkpoint_every
  (and at the end); returns the last step. A step flagged non-finite (its update already dropped in the
  compiled step) is found at the next log or checkpoint step, before anything is saved: with
  `config.optimizer.nonfinite` "stop" the loop exits (SystemExit naming the step), with "skip" it warns and
  counts it (`skipped_steps` in the log records and the checkpoint's data state), up to MAX_SKIPPED_IN_A_ROW
  steps in a row."""
  from kvjax.training.train_state import nonfinite_paths
  policy = config.optimizer.nonfinite
  pending = []  # (step, metrics) since the last check; the metrics stay device values until then
  in_a_row = 0
  start = time.perf_counter()
  while step < config.total_steps:
    batch = inputs.next_batch(step)
    state, metrics = trainer.step(state, batch)
    step += 1
    pending.append((step, metrics))
    log = step % config.log_every == 0 or step == config.total_steps
    save = step % config.checkpoint_every == 0 or step == config.total_steps
    if not (log or save):
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
    if save:
      bad_paths = nonfinite_paths(state)  # never true after a guarded step; the checkpoints' last line of defence
      if bad_paths:
        raise SystemExit(f"error: step {step}: the train state holds non-finite values ({', '.join(bad_paths[:3])}"
                         f"{', ...' if len(bad_paths) > 3 else ''}); not saved; {_finite_checkpoint_note(checkpoints)}")
      # The data position: global batches read, the same on every host and for any number of hosts.
      checkpoints.save(step, state, {"global_batches": inputs.global_batches, "skipped_steps": skipped},
                       force=step == config.total_steps)
  return step


def _resume_check(inputs):
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


class RunRefused(Exception):
  """A run that cannot start (a bad option, input or workdir): one line, exit 2. A run that stops after it
  started (a non-finite step, a failed save) exits 1 with its own message instead."""


def main(argv=None) -> int:
  try:
    return _train(_parser().parse_args(argv))
  except RunRefused as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _train(args) -> int:
  import jax
  if not 0 <= args.data_workers <= 256:
    raise RunRefused(f"--data-workers {args.data_workers}: give 0 (read in this process) to 256")
  if args.steps is not None and args.steps < 0:
    raise RunRefused(f"--steps {args.steps}: give the step to train until (0 sets up the workdir only)")
  if args.coordinator or args.distributed:
    if not 1 <= args.peer_timeout <= 86400:
      raise RunRefused(f"--peer-timeout {args.peer_timeout} must be in [1, 86400] seconds")
    jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                               process_id=args.process_id, heartbeat_timeout_seconds=args.peer_timeout)
  from kvjax.atomic import OutputError, check_writable
  from kvjax.training.checkpointing import NULL_EMBEDDING, CheckpointError, TrainCheckpoints, abstract_with_shardings
  from kvjax.training.inputs import step_inputs
  from kvjax.sharding import make_mesh
  from kvjax.training.trainer import make_trainer
  from kvjax.training.starting_weights import lpips_weights, movq_start, training_weights, unet_start

  try:
    config = _train_config(args)
  except ValueError as e:
    raise RunRefused(f"--config {args.config}: {e}")
  if config.global_batch_size % jax.process_count():
    raise RunRefused(f"batch size {config.global_batch_size} does not split over {jax.process_count()} hosts")
  if args.data not in GENERATED_SOURCES and not os.path.isdir(args.data):
    raise RunRefused(f"--data {args.data}: no such folder (make one with `python -m train.prepare_data`)")
  try:
    mesh = make_mesh(args.mesh)
  except ValueError as e:
    raise RunRefused(f"--mesh {args.mesh}: {e}")
  try:
    check_writable(args.workdir)  # before any weights load
  except OutputError as e:
    raise RunRefused(f"--workdir {args.workdir}: {e}")
  main_host = jax.process_index() == 0
  say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if main_host else (lambda *a: None)

  weights = tokenizer = start = lpips = None
  try:
    if config.is_movq:
      start, said = movq_start(config, args.weights)
      say(f"{config.model.replace('_', ' ')} starts from {said}")
      lpips = lpips_weights(config, args.lpips)
      if lpips is None and config.movq.perceptual_weight > 0:
        say(f"WARNING: no --lpips weights: the perceptual loss (weight {config.movq.perceptual_weight}) is OFF; "
            "training uses the reconstruction and adversarial terms alone (convert LPIPS with `python -m "
            "convert lpips`)")
    else:
      if args.weights is None:
        say("no --weights: the encoders and the UNet start from RANDOM weights, captions use a stand-in tokenizer")
      weights, tokenizer = training_weights(config, args.weights, args.tokenizer)
      if args.init is not None:
        weights = unet_start(config, weights, args.init)
        say(f"the {config.model} UNet starts from {args.init}")
      if config.model == "keyframe" and config.keyframe.mode == "video" and config.keyframe.video_input_from_image:
        from kvjax.training.keyframe_loss import video_input_from_image
        weights = weights.replace(keyframe=video_input_from_image(weights.keyframe, config.model_config.out_channels))
        say("its video input layer starts as its image input layer (condition channels zero)")
    if args.init is not None and config.is_movq:
      raise ValueError("--init applies to UNet runs; MoVQ runs start from --weights")
  except (FileNotFoundError, ValueError) as e:
    raise RunRefused(str(e))

  try:
    os.makedirs(args.workdir, exist_ok=True)
  except OSError as e:
    raise RunRefused(f"--workdir {args.workdir}: {e.strerror or e}")
  _check_same_run(args.workdir, config)
  try:
    checkpoints = TrainCheckpoints(os.path.join(args.workdir, "checkpoints"), keep=config.keep_checkpoints,
                                   save_every=config.checkpoint_every)
  except CheckpointError as e:
    raise RunRefused(str(e))
  if main_host:
    try:
      _write_json(os.path.join(args.workdir, "config.json"), dataclasses.asdict(config))
      if not config.is_movq:
        _write_null_embedding(os.path.join(args.workdir, NULL_EMBEDDING), getattr(weights, f"{config.model}_null"))
    except OSError as e:
      raise RunRefused(f"writing into {args.workdir} failed ({e.strerror or e})")

  trainer = make_trainer(config, mesh, lpips_params=lpips,
                         null_embedding=None if config.is_movq else getattr(weights, f"{config.model}_null"))
  try:
    inputs = step_inputs(config, args.data, weights=weights, tokenizer=tokenizer, mesh=mesh,
                         local_batch_size=config.global_batch_size // jax.process_count(),
                         shard_index=jax.process_index(), shard_count=jax.process_count(),
                         worker_count=args.data_workers)
  except (FileNotFoundError, ValueError) as e:
    raise RunRefused(f"--data {args.data}: {e}")
  try:
    step, state, data_state = checkpoints.restore_latest(
        abstract_with_shardings(trainer.abstract_state(), trainer.shardings), check=_resume_check(inputs), warn=say)
  except CheckpointError as e:
    raise RunRefused(str(e))
  skipped = 0
  if step is None:
    step, state = 0, trainer.init_state(start if config.is_movq else getattr(weights, config.model))
  else:
    skipped = int(data_state.get("skipped_steps", 0))
    say(f"resumed from step {step} ({checkpoints.directory})")
  try:
    metrics_file = _metrics_log(args.workdir, step, say) if main_host else None
  except OSError as e:
    raise RunRefused(f"{os.path.join(args.workdir, 'metrics.jsonl')}: {e.strerror or e}")

  try:
    step = train_loop(config, trainer, inputs, checkpoints, step, state, say=say, metrics_file=metrics_file,
                      skipped=skipped)
    checkpoints.wait()
    checkpoints.close()
  except CheckpointError as e:  # a full disk, a folder gone: named, with the checkpoint to resume from
    raise SystemExit(f"error: {e}: make room (or fix the folder) and run the same command to resume")
  say(f"done: step {step}, checkpoints {checkpoints.all_steps()} in {checkpoints.directory}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
