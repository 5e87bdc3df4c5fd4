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

Any field of the preset's settings (kvjax.training.train_config.TrainConfig) is set by its dotted name with
--set NAME=VALUE, repeatable and applied after the other options, e.g.
  python -m train --config keyframe-tiny --set optimizer.learning_rate=3e-4 --set keyframe.high_noise_fraction=0.5 ...
WORKDIR/config.json records the settings; a run resumed with other settings (its length and --nonfinite
aside) is refused, naming the fields that differ.

LoRA: --lora-rank R [--lora-targets GROUPS] trains low-rank adapters alone over the frozen UNet (any UNet
preset); `python -m train.export WORKDIR adapter.safetensors` writes the adapter, `python -m sample --lora` uses it.

Watching a run: `tensorboard --logdir WORKDIR` shows every logged metric, the throughput, the learning rate
and the devices' memory; --validation-prompts FILE samples videos every --validation-every steps into
WORKDIR/validation/step_N/ and TensorBoard. On a terminal a progress bar with an ETA stays under the log.
"""

from __future__ import annotations

import argparse
import sys

from kvjax.cli import program_name
from kvjax.models.lora import DEFAULT_TARGETS, LORA_TARGETS, check_target_names
from kvjax.training.movq_gan import INIT_FROM, TRAIN_SCOPES
from kvjax.training.optimizer import NONFINITE_POLICIES
from kvjax.training.overrides import OverrideError, add_config_arguments, config_from_args
from kvjax.training.run import RunRefused, run
from kvjax.training.train_config import COMPUTE_DTYPES, REMAT_POLICIES, TRAIN_PRESETS


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=program_name("train", __package__), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  add_config_arguments(p)
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
  p.add_argument("--lora-rank", type=int, metavar="R", help="UNet runs: train LoRA adapters of rank R alone, the "
                 "UNet frozen (lora.rank; other LoRA settings: --set lora.alpha=..., lora.dropout, lora.init, "
                 "lora.base_dtype, lora.trigger_words)")
  p.add_argument("--lora-targets", metavar="GROUPS", help="with --lora-rank: comma-separated groups of layers "
                 f"that get adapters, of {', '.join(LORA_TARGETS)} (default: {','.join(DEFAULT_TARGETS)})")
  p.add_argument("--data-workers", type=int, default=0, help="grain reader processes per host")
  p.add_argument("--coordinator", help="host:port of process 0, for multi-host runs")
  p.add_argument("--num-processes", type=int)
  p.add_argument("--process-id", type=int)
  p.add_argument("--distributed", action="store_true",
                 help="call jax.distributed.initialize() with the cluster's own settings (TPU pods, SLURM)")
  p.add_argument("--validation-prompts", metavar="FILE", help="UNet runs: sample these prompts (one a line, at "
                 "most 16) with fixed seeds through the pipeline at the run's current weights, into "
                 "WORKDIR/validation/step_N/ and TensorBoard")
  p.add_argument("--validation-every", type=int, metavar="N", help="validate every N steps and at the end "
                 "(default: every checkpoint)")
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
  """The preset, then the options that set its fields (shorthand for --set), then each --set."""
  if args.steps is not None and args.steps < 0:
    raise RunRefused(f"--steps {args.steps}: give the step to train until (0 sets up the workdir only)")
  movq = {"movq.train_scope": args.train_scope, "movq.init_from": args.init_from,
          "movq.discriminator_start": args.discriminator_start}
  movq = {k: v for k, v in movq.items() if v is not None}
  if args.lora_targets is not None and args.lora_rank is None:
    raise RunRefused(f"--lora-targets {args.lora_targets}: give --lora-rank R too")
  try:
    targets = None if args.lora_targets is None else check_target_names(args.lora_targets)
  except ValueError as e:
    raise RunRefused(f"--lora-targets {args.lora_targets}: {e}")
  try:
    if movq and not TRAIN_PRESETS[args.config].is_movq:
      raise ValueError(f"{', '.join('--' + k[5:].replace('_', '-') for k in movq)} apply to the MoVQ presets only")
    return config_from_args(args, {
        "total_steps": args.steps, "global_batch_size": args.batch_size, "resolution": args.resolution,
        "num_frames": args.num_frames, "compute_dtype": args.compute_dtype, "remat": args.remat,
        "checkpoint_every": args.checkpoint_every, "keep_checkpoints": args.keep_checkpoints,
        "log_every": args.log_every, "seed": args.seed, "optimizer.learning_rate": args.learning_rate,
        "optimizer.nonfinite": args.nonfinite, "lora.rank": args.lora_rank, "lora.targets": targets, **movq})
  except OverrideError as e:
    raise RunRefused(str(e))
  except ValueError as e:
    raise RunRefused(f"--config {args.config}: {e}")


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    return run(_train_config(args), workdir=args.workdir, data=args.data, mesh=args.mesh, weights=args.weights,
               tokenizer=args.tokenizer, init=args.init, lpips=args.lpips, data_workers=args.data_workers,
               coordinator=args.coordinator, num_processes=args.num_processes, process_id=args.process_id,
               distributed=args.distributed, peer_timeout=args.peer_timeout,
               validation_prompts=args.validation_prompts, validation_every=args.validation_every)
  except RunRefused as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
