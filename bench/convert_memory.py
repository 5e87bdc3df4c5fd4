"""Peak memory and time of converting a production-shaped keyframe checkpoint.

Writes a `t2v.pt` with the exact production key set and shapes (random fp16 values, the reference's
inference dtype) in the official container format, then runs `python -m convert keyframe` on it in a child
process per output dtype and reports the child's peak resident memory next to the checkpoint and output
sizes. Needs ~9 GB of disk for the checkpoint plus the outputs, and memory for the largest output.

  python bench/convert_memory.py [--workdir DIR] [--dtypes bf16,fp32] [--preset keyframe-1.1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import flax.traverse_util
import jax
import numpy as np

from kvjax import model_configs
from kvjax.checkpoints.torch_zip_writer import TensorSource, write_torch_zip
from kvjax.conversion.unet import TRANSPOSED_CONVS
from kvjax.conversion.naming import from_flax_layout, torch_key
from kvjax.params import abstract_params

GIB = 2**30
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the child imports `convert` from here


def measured_child(argv: list[str], what: str, env: dict | None = None) -> tuple[dict[str, int], float]:
  """Runs `python -c ARGV...` from the repository root, a process of its own (ru_maxrss is per process): the
  figures it printed as `NAME_KIB number` pairs, in bytes by name, and its seconds. Exits naming `what` if it
  failed."""
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-c", *argv], cwd=REPO, capture_output=True, text=True, env=env)
  seconds = time.perf_counter() - start
  if proc.returncode:
    print(proc.stdout, proc.stderr, file=sys.stderr)
    raise SystemExit(f"{what} failed")
  words = proc.stdout.split()
  return {w: int(words[i + 1]) * 1024 for i, w in enumerate(words[:-1]) if w.endswith("_KIB")}, seconds


def production_shaped_checkpoint(path: str, config) -> int:
  """Writes the checkpoint; returns its parameter count."""
  import re
  pattern = re.compile(TRANSPOSED_CONVS)
  block = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float16) * np.float16(0.02)
  state, total = {}, 0
  for path_, leaf in flax.traverse_util.flatten_dict(nn.unbox(abstract_params(config))).items():
    shape = from_flax_layout(np.broadcast_to(np.empty((), np.int8), leaf.shape), path_,
                             bool(pattern.search("/".join(path_)))).shape
    size = int(np.prod(shape))
    total += size
    make = lambda shape=shape, size=size: np.resize(block, size).reshape(shape)
    state[torch_key(path_)] = TensorSource(shape, np.float16, make)
  null = TensorSource((config.context_dim,), np.float16, lambda: block[: config.context_dim].copy())
  write_torch_zip(path, {"unet": state, "null_embedding": null}, archive_name="t2v")
  return total


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--dtypes", default="bf16,fp32")
  parser.add_argument("--preset", default="keyframe-1.1")
  args = parser.parse_args()
  config = model_configs.get_preset(args.preset)
  workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="kvjax-bench-"))
  os.makedirs(workdir, exist_ok=True)
  src = os.path.join(workdir, "t2v.pt")
  start = time.perf_counter()
  if os.path.exists(src):  # reuse a checkpoint left by an earlier run with --workdir
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nn.unbox(abstract_params(config))))
    print(f"using {src}: {count:,} parameters, {os.path.getsize(src) / GIB:.2f} GiB", flush=True)
  else:
    count = production_shaped_checkpoint(src, config)
    print(f"wrote {src}: {count:,} parameters, {os.path.getsize(src) / GIB:.2f} GiB in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
  print(f"\n{'dtype':<6} {'checkpoint GiB':>15} {'output GiB':>11} {'peak RSS GiB':>13} {'peak/output':>12} "
        f"{'seconds':>8}", flush=True)
  for dtype in args.dtypes.split(","):
    out = os.path.join(workdir, f"out-{dtype}")
    shutil.rmtree(out, ignore_errors=True)
    script = ("import resource, sys; from convert.__main__ import main; rc = main(sys.argv[1:]); "
              "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)")
    figures, seconds = measured_child([script, "keyframe", src, out, "--config", args.preset, "--dtype", dtype],
                                      f"conversion to {dtype}")
    peak = figures["PEAK_KIB"]
    itemsize = 4 if dtype == "fp32" else 2
    output = count * itemsize
    shutil.rmtree(out)
    print(f"{dtype:<6} {os.path.getsize(src) / GIB:>15.2f} {output / GIB:>11.2f} {peak / GIB:>13.2f} "
          f"{peak / output:>12.2f} {seconds:>8.0f}", flush=True)
  if not args.workdir:
    shutil.rmtree(workdir)


if __name__ == "__main__":
  main()
