"""Our keyframe UNet forward against the official PyTorch UNet at the same config, on this machine.

  python bench/unet_vs_torch.py --reference PATH/TO/kandinsky_video/model [--config keyframe-tiny] [--profile]

PATH is the official repository's `kandinsky_video/model` folder (not shipped with kvjax; torch and einops
must be installed). Both get the same random weights (converted by our converter), run a video-mode forward
(clips x frames, fp32) and report the median time of several calls after warm-up, plus the max difference. --profile adds where our
forward spends its time: XLA's CPU ops from a jax.profiler trace, by kind (an op's name without its number).

Measured on this 2-core machine (keyframe-bench, 1 x 4 frames at 32x32; issue 13 d): 0.70x PyTorch with the
default XLA flags, 0.86x with XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= (YNNPACK fusions off, 23%
faster: XLA's own loops then run the convolutions, GroupNorm reductions and dots). Layout copies and
transposes are 4% of the op time; GroupNorm + SiLU passes about 45%, dots 27%, convolutions 17%.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import importlib
import json
import re
import math
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np


def _median_seconds(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--reference", required=True, help="the official kandinsky_video/model folder")
  p.add_argument("--config", default="keyframe-bench", help="a keyframe preset, or keyframe-bench (default)")
  p.add_argument("--clips", type=int, default=1)
  p.add_argument("--frames", type=int, default=4)
  p.add_argument("--size", type=int, default=32, help="latent height and width")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--profile", action="store_true", help="also print our forward's time by XLA op kind")
  args = p.parse_args(argv)

  import dataclasses
  import torch
  from kvjax import model_configs
  from kvjax.conversion.unet import convert_unet
  from kvjax.params import build_model

  folder = os.path.abspath(args.reference)
  sys.path.insert(0, os.path.dirname(folder))
  reference_unet = importlib.import_module(f"{os.path.basename(folder)}.unet").UNet
  if args.config == "keyframe-bench":  # the production layout at a quarter of the width, 16 groups, heads of 32
    config = dataclasses.replace(model_configs.KEYFRAME_1_1, model_channels=96, init_channels=48, time_embed_dim=384,
                                 context_dim=256, groups=16, head_dim=32)
  else:
    config = model_configs.get_preset(args.config)

  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count())
  model = reference_unet(**config.to_dict()).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      param.copy_(torch.randn(param.shape) / math.sqrt(param[0].numel()) if param.ndim >= 2
                  else torch.randn(param.shape) * 0.1)
  with tempfile.TemporaryDirectory() as scratch:
    path = os.path.join(scratch, "t2v.pt")
    torch.save({"unet": model.state_dict(), "null_embedding": torch.zeros(config.context_dim)}, path)
    params = jax.device_put(convert_unet(path, config).params)

  n = args.clips * args.frames
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, config.num_channels, args.size, args.size)).astype(np.float32)
  time_ = np.full((n,), 500.0, np.float32)
  context = rng.normal(size=(n, 8, config.context_dim)).astype(np.float32)
  mask = np.ones((n, 8), bool)
  frame_index = np.tile(np.arange(args.frames, dtype=np.float32), args.clips)
  aug = np.full((n,), 20, np.int32)
  motion = np.full((n,), 10, np.int32)

  tensors = [torch.from_numpy(a) for a in (x, time_, context, mask, frame_index)]
  def run_torch():
    with torch.no_grad():
      return model(*tensors[:4], tensors[4], args.frames, torch.from_numpy(aug), torch.from_numpy(motion))

  unet = build_model(config)
  forward = jax.jit(lambda p, *a: unet.apply({"params": p}, *a[:4], frame_index=a[4], num_frames=args.frames,
                                              noise_aug_time=a[5], motion_score=a[6], input_layer="video"))
  inputs = (np.moveaxis(x, 1, -1), time_, context, mask, frame_index, aug, motion)
  run_jax = lambda: jax.block_until_ready(forward(params, *inputs))

  ours = np.moveaxis(np.asarray(run_jax()), -1, 1)
  theirs = run_torch().numpy()
  rel = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
  t_torch, t_jax = _median_seconds(run_torch, args.repeats), _median_seconds(run_jax, args.repeats)
  print(f"# keyframe UNet ({args.config}), video mode, {args.clips} x {args.frames} frames at {args.size}x"
        f"{args.size}, fp32, {os.cpu_count()} CPU threads; rel L2 difference {rel:.2e}")
  print(f"{'implementation':<16} {'median s':>9} {'ratio':>7}")
  print(f"{'PyTorch':<16} {t_torch:>9.3f} {1.0:>7.2f}")
  print(f"{'kvjax (jit)':<16} {t_jax:>9.3f} {t_torch / t_jax:>7.2f}")
  print(f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})")
  if args.profile:
    _print_profile(run_jax, t_jax, args.repeats)
  return 0


def _print_profile(run, seconds: float, repeats: int) -> None:
  """Our forward's XLA ops by kind, in ms per call, from a trace of `repeats` calls."""
  with tempfile.TemporaryDirectory() as folder:
    with jax.profiler.trace(folder):
      for _ in range(repeats):
        run()
    with gzip.open(glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)[0]) as f:
      events = json.load(f)["traceEvents"]
  host = ("ThunkExecutor", "$", "Slinky", "PjitFunction", "CommonPjRt", "end: ", "Parse", "Handle")
  kinds, counts = collections.Counter(), collections.Counter()
  for event in events:
    if event.get("ph") == "X" and "dur" in event and not event["name"].startswith(host):
      kind = re.sub(r"\.\d+$", "", event["name"])
      kinds[kind] += event["dur"] / 1000 / repeats
      counts[kind] += 1
  total = sum(kinds.values())
  print(f"\n# our forward by XLA op kind (ms per call; ops sum {total:.0f} ms of {1000 * seconds:.0f} ms wall, two "
        "threads overlap and the rest is dispatch)")
  print(f"{'op kind':<28} {'ms':>8} {'share':>6} {'ops':>6}")
  for kind, ms in kinds.most_common(14):
    print(f"{kind:<28} {ms:>8.1f} {100 * ms / total:>5.1f}% {counts[kind] // repeats:>6}")


if __name__ == "__main__":
  sys.exit(main())
