"""Per-device memory of the training step on device meshes (compile-only, no weights), and tiny step times.

  python bench/train_memory.py                                  # 8- and 64-device meshes, both models
  python bench/train_memory.py --devices 8 --models keyframe    # only meshes of up to 8 devices
  python bench/train_memory.py --meshes fsdp=64 "fsdp=16,tensor=4" --skip-compile
  python bench/train_memory.py --tiny-only                      # CPU step time of the tiny presets only
  python bench/train_memory.py --models image_movq,video_movq   # the MoVQ-GAN recipes (with LPIPS)
  python bench/train_memory.py --models keyframe --lora-rank 64 --meshes data=1 fsdp=4 fsdp=8 --skip-compile

The devices are simulated CPU devices (`--xla_force_host_platform_device_count`, set from `--devices`
before jax is imported); a mesh of fewer devices uses the first ones. Nothing is allocated for the
production models: the state's bytes come from its shapes and shardings, the rest from compiling the
train step on abstract inputs (`Trainer.lower().compile().memory_analysis()`). One compile of a
production step is slow on a CPU host (2 shared cores: keyframe fsdp=8 6 minutes, data=2,fsdp=2,tensor=2
21 minutes) and takes ~7 GiB of host memory; `--skip-compile` gives the state columns alone in seconds,
`--compile-max-devices 8` compiles only the smaller meshes.

One table per model, one row per mesh, GiB per device. Left of the `|`, the state (exact, from
`abstract_state()` and `sharding.shard_shape`):
  params     the float32 master weights (every parameter, frozen ones included; MoVQ: generator and
             discriminator); with --lora-rank: the frozen base (in --lora-base-dtype) plus the float32
             adapters, the moments and EMA then being the adapters' alone
  opt state  AdamW's two moments for the trainable parameters (frozen ones have none; MoVQ: both optimisers)
  EMA        the exponential moving average of the parameters (MoVQ: the generator's)
  state      params + opt state + EMA; the `1 device (unsharded)` row is the whole state
  fsdp x tp  the mesh's fsdp x tensor size: the axes parameters are split over (never data)
  total/dev  the unsharded state over this row's: FSDP and tensor parallelism divide the state by
             `fsdp x tp` (a little less where a dimension does not divide and stays whole)

Right of the `|`, the compiled step (XLA's buffer assignment for one device, on the CPU backend; a GPU
or TPU compile schedules and fuses differently, so its temp differs):
  args       the step's inputs: the state (left) and this device's slice of the batch
  batch      of which this device's slice of the batch (UNets: latents and text context, float32; MoVQs:
             uint8 frames; the MoVQ's frozen LPIPS weights count in args too)
  temp       everything the step allocates besides inputs and outputs: activations kept for the
             backward pass (per UNet level with remat), gradients, gathered weights, workspace
  out-alias  outputs not written in place of a donated input (the state is donated, so about nothing)
  peak       args + temp + out-alias: what a device needs to run the step
  compile s  seconds to lower and compile

Step table (the tiny presets, random weights, on CPU): the first step (compile + run) and the mean of the
next `--tiny-steps`. Simulated devices share the host's cores, so more of them is not faster here; it
shows the sharded step's overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

DEFAULT_MESHES = ("fsdp=8", "data=2,fsdp=2,tensor=2", "fsdp=64", "data=8,fsdp=8", "fsdp=16,tensor=4")
TINY_MESHES = ("data=1", "data=2,fsdp=2,tensor=2")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--devices", type=int, default=64, help="simulated CPU devices (meshes larger are skipped)")
  p.add_argument("--models", default="keyframe,interpolation",
                 help="comma-separated: keyframe,interpolation,image_movq,video_movq")
  p.add_argument("--meshes", nargs="+", default=DEFAULT_MESHES, help="mesh specs, e.g. fsdp=8 data=2,fsdp=4")
  p.add_argument("--batch", type=int, help="global batch (default: the production preset's, 64)")
  p.add_argument("--frames", type=int, help="keyframe clip frames (default: the preset's, 12)")
  p.add_argument("--groups", type=int, help="interpolation groups per clip (default: the preset's, 2)")
  p.add_argument("--remat", help="remat policy (default: the preset's, levels)")
  p.add_argument("--lora-rank", type=int, help="UNets: a LoRA run of this rank (the UNet frozen)")
  p.add_argument("--lora-targets", default="self_attention,cross_attention", help="with --lora-rank: target groups")
  p.add_argument("--lora-base-dtype", default="bfloat16", help="with --lora-rank: the frozen base's type")
  p.add_argument("--skip-compile", action="store_true", help="state table only (shapes and shardings)")
  p.add_argument("--compile-max-devices", type=int, default=None,
                 help="compile only meshes of at most this many devices (default: all)")
  p.add_argument("--tiny-steps", type=int, default=3, help="timed steps after the first (0: skip the step table)")
  p.add_argument("--tiny-meshes", nargs="+", default=TINY_MESHES)
  p.add_argument("--tiny-only", action="store_true", help="only the step table")
  return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # before jax is imported: the CPU backend reads the device count once
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={ARGS.devices}"]).strip()

import dataclasses  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from kvjax.models.lora import LoraConfig, check_target_names  # noqa: E402
from kvjax.params import random_params  # noqa: E402
from kvjax.training.train_config import TRAIN_PRESETS, TrainConfig  # noqa: E402
from kvjax.sharding import make_mesh, parse_mesh  # noqa: E402
from kvjax.training.movq_gan import GANState  # noqa: E402
from kvjax.training.trainer import abstract_batch, make_trainer  # noqa: E402
from kvjax.training.starting_weights import lpips_weights, movq_start  # noqa: E402

GIB = 2 ** 30


def mesh_devices(spec: str) -> int:
  return math.prod(parse_mesh(spec).values())


def trainer_on(config: TrainConfig, spec: str):
  mesh = make_mesh(spec, jax.devices()[:mesh_devices(spec)])
  if config.is_movq:  # with the perceptual network (random weights: only their shapes matter here)
    return make_trainer(config, mesh, lpips_params=lpips_weights(config, "random"))
  return make_trainer(config, mesh, null_embedding=np.zeros(config.model_config.context_dim, np.float32))


def per_device_bytes(tree, shardings) -> int:
  """Bytes of one device's shards of `tree` (abstract arrays) under `shardings` (the largest device's, which
  is every device's for the even splits the rules make)."""
  leaves, shard_leaves = jax.tree.leaves(tree), jax.tree.leaves(shardings)
  assert len(leaves) == len(shard_leaves), (len(leaves), len(shard_leaves))
  return sum(math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize for a, s in zip(leaves, shard_leaves))


def total_bytes(tree) -> int:
  return sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def state_row(trainer) -> tuple[dict[str, float], dict[str, float]]:
  state, shardings = trainer.abstract_state(), trainer.shardings
  if isinstance(state, GANState):
    g, d, gs, ds = state.generator, state.discriminator, shardings.generator, shardings.discriminator
    parts = {"params": ((g.params, d.params), (gs.params, ds.params)),
             "opt state": ((g.opt_state, d.opt_state), (gs.opt_state, ds.opt_state)),
             "EMA": (g.ema_params, gs.ema_params)}
  else:
    parts = {"params": (state.params, shardings.params), "opt state": (state.opt_state, shardings.opt_state),
             "EMA": (state.ema_params, shardings.ema_params)}
  row = {name: per_device_bytes(tree, s) / GIB if tree is not None else 0.0 for name, (tree, s) in parts.items()}
  row["state"] = per_device_bytes(state, shardings) / GIB
  unsharded = {name: total_bytes(tree) / GIB if tree is not None else 0.0 for name, (tree, _) in parts.items()}
  unsharded["state"] = total_bytes(state) / GIB
  if getattr(trainer.config, "lora", None) is not None and trainer.config.lora.enabled:
    # The frozen base (abstract, with its shardings) is the step's argument beside the state: count it as params.
    base = trainer.frozen
    per_device = per_device_bytes(base, jax.tree.map(lambda a: a.sharding, base)) / GIB
    for values, extra in ((row, per_device), (unsharded, total_bytes(base) / GIB)):
      values["params"] += extra
      values["state"] += extra
  return row, unsharded


def compiled_row(trainer) -> dict[str, float]:
  start = time.perf_counter()
  memory = trainer.lower().compile().memory_analysis()
  seconds = time.perf_counter() - start
  args, temp = memory.argument_size_in_bytes / GIB, memory.temp_size_in_bytes / GIB
  out_alias = (memory.output_size_in_bytes - memory.alias_size_in_bytes) / GIB
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in abstract_batch(trainer.config).items()}
  batch_bytes = per_device_bytes(batch, {k: trainer.batch_sharding for k in batch}) / GIB
  return {"args": args, "batch": batch_bytes, "temp": temp, "out-alias": out_alias,
          "peak": args + temp + out_alias, "compile s": seconds}


def production_config(model: str, args: argparse.Namespace) -> TrainConfig:
  config = TRAIN_PRESETS[f"{model.replace('_', '-')}-1.1"]
  changes = {"global_batch_size": args.batch, "num_frames": args.frames, "num_groups": args.groups,
             "remat": args.remat}
  if args.lora_rank is not None:
    changes["lora"] = LoraConfig(rank=args.lora_rank, targets=check_target_names(args.lora_targets),
                                 base_dtype=args.lora_base_dtype)
  return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})


def describe(config: TrainConfig) -> str:
  clip = f"{config.num_groups} groups" if config.model == "interpolation" else f"{config.num_frames} frames"
  extra = (f", {config.movq.discriminator}, {config.movq.lpips}" if config.is_movq
           else f" ({config.clip_frames} latent)")
  lora = config.lora
  recipe = (f", LoRA rank {lora.rank} on {','.join(lora.targets)} over a frozen {lora.base_dtype} base"
            if lora.enabled else "")
  return (f"{config.model}: {config.pipeline}, global batch {config.global_batch_size} x {clip}{extra} "
          f"at {config.resolution[0]}x{config.resolution[1]}, {config.compute_dtype} compute, remat {config.remat}"
          f"{recipe}")


def memory_tables(args: argparse.Namespace) -> None:
  meshes = [m for m in args.meshes if mesh_devices(m) <= args.devices]
  skipped = [m for m in args.meshes if m not in meshes]
  if skipped:
    print(f"# skipped (more than --devices {args.devices}): {' '.join(skipped)}")
  for model in args.models.split(","):
    config = production_config(model, args)
    print(f"\n# {describe(config)}")
    start = time.perf_counter()
    head = (f"{'mesh':<24} {'devices':>7} {'fsdp x tp':>9} {'params':>8} {'opt state':>9} {'EMA':>8} {'state':>8} "
            f"{'total/dev':>9}")
    if not args.skip_compile:
      head += f" | {'args':>8} {'batch':>7} {'temp':>8} {'out-alias':>9} {'peak':>8} {'compile s':>9}"
    print(head)
    total_printed = False
    for spec in meshes:
      trainer = trainer_on(config, spec)
      state, total = state_row(trainer)
      if not total_printed:
        print(f"{'1 device (unsharded)':<24} {1:>7} {1:>9} {total['params']:>8.2f} {total['opt state']:>9.2f} "
              f"{total['EMA']:>8.2f} {total['state']:>8.2f} {1:>9.2f}", flush=True)
        total_printed = True
      sizes = parse_mesh(spec)
      line = (f"{spec:<24} {mesh_devices(spec):>7} {sizes['fsdp'] * sizes['tensor']:>9} {state['params']:>8.2f} "
              f"{state['opt state']:>9.2f} {state['EMA']:>8.2f} {state['state']:>8.2f} "
              f"{total['state'] / state['state']:>9.2f}")
      compile_here = not args.skip_compile and (args.compile_max_devices is None
                                                or mesh_devices(spec) <= args.compile_max_devices)
      if compile_here:
        try:
          c = compiled_row(trainer)
        except Exception as error:  # e.g. a batch that does not divide over the mesh
          line += f" | compile failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}"
        else:
          line += (f" | {c['args']:>8.2f} {c['batch']:>7.2f} {c['temp']:>8.2f} {c['out-alias']:>9.2f} "
                   f"{c['peak']:>8.2f} {c['compile s']:>9.1f}")
      elif not args.skip_compile:
        line += " | (not compiled: --compile-max-devices)"
      print(line, flush=True)
    print(f"# {model}: {time.perf_counter() - start:.1f} s")


def random_batch(config: TrainConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
  batch = {}
  for name, a in abstract_batch(config).items():
    if name == "context_mask":
      batch[name] = np.ones(a.shape, bool)
      batch[name][:, a.shape[1] // 2:] = rng.random((a.shape[0], a.shape[1] - a.shape[1] // 2)) < 0.5
    elif name == "skip_frames":
      batch[name] = rng.choice(np.array([1, 3], np.int32), a.shape)
    elif name == "motion_score":
      batch[name] = rng.random(a.shape, np.float32)
    elif name == "frames":
      batch[name] = rng.integers(0, 256, a.shape).astype(np.uint8)
    else:
      batch[name] = rng.standard_normal(a.shape, np.float32)
  return batch


def step_table(args: argparse.Namespace) -> None:
  meshes = [m for m in args.tiny_meshes if mesh_devices(m) <= args.devices]
  print(f"\n# tiny presets on {jax.devices()[0].device_kind} ({os.cpu_count()} cores); "
        f"first step and the mean of the next {args.tiny_steps}")
  print(f"{'preset':<20} {'mesh':<24} {'devices':>7} {'first s':>8} {'step s':>8}")
  start = time.perf_counter()
  for model in args.models.split(","):
    config = TRAIN_PRESETS[f"{model.replace('_', '-')}-tiny"]
    params = movq_start(config, None)[0] if config.is_movq else random_params(config.model_config, 0)
    batch = random_batch(config, np.random.default_rng(0))
    for spec in meshes:
      trainer = trainer_on(config, spec)
      state = trainer.init_state(params)
      placed = trainer.global_batch(batch)
      times = []
      for _ in range(args.tiny_steps + 1):
        t = time.perf_counter()
        state, metrics = trainer.step(state, placed)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
      assert np.isfinite(float(metrics["loss"])), metrics
      mean = sum(times[1:]) / max(len(times) - 1, 1)
      print(f"{model.replace('_', '-') + '-tiny':<20} {spec:<24} {mesh_devices(spec):>7} {times[0]:>8.2f} {mean:>8.2f}", flush=True)
  print(f"# tiny steps: {time.perf_counter() - start:.1f} s")


def main(args: argparse.Namespace) -> int:
  if len(jax.devices()) < args.devices:
    sys.exit(f"asked for {args.devices} devices, jax has {len(jax.devices())} (was jax imported before?)")
  print(f"# {len(jax.devices())} simulated {jax.devices()[0].platform} devices; jax {jax.__version__}")
  if not args.tiny_only:
    memory_tables(args)
  if args.tiny_steps > 0:
    step_table(args)
  return 0


if __name__ == "__main__":
  sys.exit(main(ARGS))
