"""Trains a UNet (keyframe, interpolation) or a MoVQ (image autoencoder, temporal video decoder; a GAN),
sharded over a device mesh, with checkpoints and exact resume.

  python -m train --config keyframe-tiny --mesh data=2,fsdp=2,tensor=2 --data synthetic --workdir runs/tiny
  python -m train --config keyframe-1.1 --mesh fsdp=64 --data prepared/ --weights converted/ --workdir runs/kf
  python -m train --config video-movq-1.1 --mesh fsdp=8 --data prepared/ --weights converted/ --lpips lpips/ \
      --workdir runs/decoder

Re-running the same command resumes from the last complete checkpoint in --workdir (same step, same data
position, same randomness). --data takes a folder written by `python -m train.prepare_data`, or
"synthetic" for random clips (a smoke test). Without --weights the frozen encoders and the UNet start from
RANDOM weights with a stand-in tokenizer. MoVQ runs take --weights as a converted MoVQ folder or a
`convert all` output, and --lpips as the output of `python -m convert lpips` (without it the perceptual
loss is off, and the run says so). On several hosts, start one process per host with
--coordinator, --num-processes and --process-id (or none of them where the cluster sets them up).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from kvjax.training.config import COMPUTE_DTYPES, REMAT_POLICIES, TRAIN_PRESETS
from kvjax.training.inputs import GENERATED_SOURCES
from kvjax.training.movq_gan import INIT_FROM, TRAIN_SCOPES


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, choices=sorted(TRAIN_PRESETS), help="training preset")
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
  return p


def _size(text: str) -> tuple[int, int]:
  height, sep, width = text.partition("x")
  if not sep or not height.isdigit() or not width.isdigit():
    raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 64x64, got {text!r}")
  return int(height), int(width)


def _train_config(args):
  config = TRAIN_PRESETS[args.config]
  overrides = {"total_steps": args.steps, "global_batch_size": args.batch_size, "resolution": args.resolution,
               "num_frames": args.num_frames, "compute_dtype": args.compute_dtype,
               "remat": args.remat, "checkpoint_every": args.checkpoint_every,
               "keep_checkpoints": args.keep_checkpoints, "log_every": args.log_every, "seed": args.seed}
  config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
  if args.learning_rate is not None:
    config = dataclasses.replace(config, optimizer=dataclasses.replace(config.optimizer,
                                                                       learning_rate=args.learning_rate))
  movq = {"train_scope": args.train_scope, "init_from": args.init_from, "discriminator_start": args.discriminator_start}
  movq = {k: v for k, v in movq.items() if v is not None}
  if movq:
    if not config.is_movq:
      raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in movq)} apply to the MoVQ presets only")
    config = dataclasses.replace(config, movq=dataclasses.replace(config.movq, **movq))
  return config


def _check_same_run(workdir: str, config) -> None:
  """A workdir belongs to one run: resuming with other settings (the length aside) is refused. Settings a
  run saved before a field existed read as that field's default."""
  from kvjax.training.config import TrainConfig, config_from_dict
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    try:
      saved = dataclasses.asdict(config_from_dict(TrainConfig, json.load(f)))
    except (ValueError, TypeError) as e:
      raise SystemExit(f"{path}: not the settings of a run of this kvjax ({e}); use a new --workdir")
  current = dataclasses.asdict(config)
  changed = sorted(k for k in current if k != "total_steps" and current[k] != saved[k])
  if changed:
    raise SystemExit(f"{workdir} holds a run with other settings ({', '.join(changed)}); use a new --workdir")


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


def _metrics_log(workdir: str, resumed_step: int):
  """metrics.jsonl, cut back to the resumed step (a killed run may have logged steps it did not save)."""
  path = os.path.join(workdir, "metrics.jsonl")
  kept = []
  if os.path.isfile(path):
    with open(path) as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resumed_step]
  with open(path + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)
  return open(path, "a")


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  import jax
  if args.coordinator or args.distributed:
    jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                               process_id=args.process_id)
  from kvjax.training.checkpointing import NULL_EMBEDDING, TrainCheckpoints, abstract_with_shardings
  from kvjax.training.inputs import state_from_json, state_to_json, step_inputs
  from kvjax.training.mesh import make_mesh
  from kvjax.training.trainer import make_trainer
  from kvjax.training.weights import lpips_weights, movq_start, training_weights, unet_start

  try:
    config = _train_config(args)
  except ValueError as e:
    raise SystemExit(f"--config {args.config}: {e}")
  if config.global_batch_size % jax.process_count():
    raise SystemExit(f"batch size {config.global_batch_size} does not split over {jax.process_count()} hosts")
  if args.data not in GENERATED_SOURCES and not os.path.isdir(args.data):
    raise SystemExit(f"--data {args.data}: no such folder (make one with `python -m train.prepare_data`)")
  mesh = make_mesh(args.mesh)
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
    if args.init is not None and config.is_movq:
      raise ValueError("--init applies to UNet runs; MoVQ runs start from --weights")
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(str(e))

  os.makedirs(args.workdir, exist_ok=True)
  _check_same_run(args.workdir, config)
  if main_host:
    _write_json(os.path.join(args.workdir, "config.json"), dataclasses.asdict(config))
    if not config.is_movq:
      _write_null_embedding(os.path.join(args.workdir, NULL_EMBEDDING), getattr(weights, f"{config.model}_null"))

  trainer = make_trainer(config, mesh, lpips_params=lpips,
                         null_embedding=None if config.is_movq else getattr(weights, f"{config.model}_null"))
  try:
    inputs = step_inputs(config, args.data, weights=weights, tokenizer=tokenizer, mesh=mesh,
                         local_batch_size=config.global_batch_size // jax.process_count(),
                         shard_index=jax.process_index(), shard_count=jax.process_count(),
                         worker_count=args.data_workers)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"--data {args.data}: {e}")
  checkpoints = TrainCheckpoints(os.path.join(args.workdir, "checkpoints"), keep=config.keep_checkpoints,
                                 save_every=config.checkpoint_every)
  step, state, data_state = checkpoints.restore_latest(abstract_with_shardings(trainer.abstract_state(),
                                                                               trainer.shardings))
  if step is None:
    step, state = 0, trainer.init_state(start if config.is_movq else getattr(weights, config.model))
  else:
    inputs.set_state(state_from_json(data_state["clips"][str(jax.process_index())]))
    say(f"resumed from step {step} ({checkpoints.directory})")
  metrics_file = _metrics_log(args.workdir, step) if main_host else None

  start = time.perf_counter()
  while step < config.total_steps:
    batch = inputs.next_batch(step)
    state, metrics = trainer.step(state, batch)
    step += 1
    if step % config.log_every == 0 or step == config.total_steps:
      record = {"step": step, **{k: float(v) for k, v in metrics.items()},
                "seconds": round(time.perf_counter() - start, 3)}
      say(" ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
      if metrics_file:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
    if step % config.checkpoint_every == 0 or step == config.total_steps:
      # Each host's reader position (multi-host: gathered so that every host restores its own).
      positions = _gather_data_states(state_to_json(inputs.get_state()))
      checkpoints.save(step, state, {"clips": positions}, force=step == config.total_steps)
  checkpoints.wait()
  checkpoints.close()
  say(f"done: step {step}, checkpoints {checkpoints.all_steps()} in {checkpoints.directory}")
  return 0


def _gather_data_states(local: str) -> dict[str, str]:
  import jax
  import numpy as np
  from jax.experimental import multihost_utils
  if jax.process_count() == 1:
    return {"0": local}
  encoded = np.frombuffer(local.encode("ascii").ljust(4096), np.uint8)
  if len(local) > 4096:
    raise ValueError("data iterator state longer than 4096 bytes")
  gathered = multihost_utils.process_allgather(encoded)
  return {str(i): bytes(row).decode("ascii").rstrip() for i, row in enumerate(np.asarray(gathered))}


if __name__ == "__main__":
  sys.exit(main())
