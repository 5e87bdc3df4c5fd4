"""Peak host memory of loading a converted folder, per program's way of loading, next to the model's size.

Writes a converted keyframe UNet of the given preset once (random values, the given dtype) into a temp folder,
then loads it in a child process per way and reports the child's peak resident memory (ru_maxrss) above what it
held before the load (the interpreter, jax and the model's abstract parameters). The model is written by
another child: a child's ru_maxrss starts from its parent's, so the measuring parent never holds the model.
  verify   `python -m convert verify`'s read-back: every array placed on the default device as it is read
  sample   `python -m sample --weights --mesh ...`: every array read onto its shards of a one-device mesh, then
           the pipeline's placement (`jax.device_put` to the same shardings, a no-op)
  init     training's `--init` (kvjax.training.starting_weights.unet_start with the run's mesh): float32 arrays
           read onto the train state's shardings, then `init_state`'s placement (a no-op for them)
With `--preset flan-ul2-encoder` (the text encoder; no init way), sample reads it block by block into the
scanned layout the pipeline runs (kvjax.pipeline.pipeline_weights), and before is its path before issue 34:
numpy, the blocks stacked on the host, then placed.
  offload  `python -m sample --offload`: the model kept in host memory as numpy (a host copy asked for)
  before   the loader before issue 34: the whole model as numpy, then `jax.device_put` in one piece (glibc's
           default allocation policy, which the loader now changes while it reads)
On a CPU-only machine the "device" is host memory, so a placed model counts once in the peak; on an accelerator
the placed arrays leave host memory and the peak of verify, sample and init is about the reads in flight.

  python bench/load_memory.py [--preset keyframe-1.1] [--channels N] [--set FIELD=N] [--dtype float32|bfloat16]
      [--ways verify,sample,init,offload,before] [--workdir DIR]

--channels overrides model_channels (and init_channels) for a smaller model that shows the same ratio.
--workdir keeps the model in DIR/model: a later run with the same DIR and options reads it instead of writing it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np

from kvjax import model_configs
from kvjax.conversion.store import ConvertedModel, save_converted
from kvjax.params import abstract_params
from convert_memory import measured_child  # (bench/ is the script's path)

GIB = 2**30
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each way, run in a child: the load, then `peak` (ru_maxrss) and `before` (VmRSS just before the load).
CHILD = """
import contextlib, resource, sys, types
import jax, numpy as np
from kvjax.conversion import store
from kvjax.conversion.store import check_converted, load_converted
from kvjax.params import abstract_params
from kvjax.sharding import make_mesh, param_shardings
way, path = sys.argv[1:]
checked = check_converted(path)  # the abstract parameters, traced once (cached), before the measured load
mesh = make_mesh('')
shardings = param_shardings(abstract_params(checked.config), mesh)
def rss():
  with open('/proc/self/status') as f:
    return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:'))
before = rss()
if way == 'verify':
  params = load_converted(path, checked.kind, checked.config, placement=None).params
elif way == 'sample' and checked.kind == 't5_encoder':  # read block by block into the scanned layout
  from kvjax.pipeline.pipeline_weights import _scanned_text_encoder
  params = _scanned_text_encoder(checked, '', mesh)
elif way == 'sample':
  params = load_converted(path, checked.kind, checked.config, placement=shardings).params
  params = jax.device_put(params, shardings)
elif way == 'init':
  from kvjax.pipeline.pipeline_weights import PipelineWeights
  from kvjax.training.starting_weights import unet_start
  run = types.SimpleNamespace(model='keyframe', model_config=checked.config)
  params = unet_start(run, PipelineWeights(*[None] * 8), path, mesh).keyframe
  params = jax.device_put(params, shardings)
elif way == 'offload':
  params = load_converted(path, checked.kind, checked.config).params
else:
  store._freed_reads_returned = contextlib.nullcontext
  params = load_converted(path, checked.kind, checked.config).params
  if checked.kind == 't5_encoder':  # the pipeline stacked the host copy's blocks, then placed them
    from kvjax.models.t5_encoder import scan_layout
    params = scan_layout(params, checked.config.num_layers)
  params = jax.device_put(params)
jax.block_until_ready(jax.tree.leaves(params))
print('PEAK_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 'BEFORE_KIB', before)
"""


def write_model(path: str, config, dtype) -> int:
  """A converted folder of `config` with random values; returns its size in bytes."""
  block = (np.random.default_rng(0).standard_normal(1 << 20) * 0.02).astype(dtype)
  # Each array is a file-backed memmap beside the folder, so the writer never holds a production model (16 GB
  # in float32) in anonymous memory: the kernel writes its pages back and drops them as the store reads them.
  os.makedirs(os.path.dirname(path), exist_ok=True)
  scratch = tempfile.mkdtemp(prefix="arrays-", dir=os.path.dirname(path))
  count = iter(range(1 << 30))

  def filled(leaf):
    array = np.memmap(os.path.join(scratch, str(next(count))), dtype, "w+", shape=leaf.shape)
    flat = array.reshape(-1)
    for start in range(0, flat.size, block.size):
      flat[start:start + block.size] = block[: flat.size - start]
    array.flush()
    return array

  try:
    params = jax.tree.map(filled, nn.unbox(abstract_params(config)))
    extras = {} if config.kind == "t5_encoder" else {"null_embedding": block[: config.context_dim].astype(np.float32)}
    save_converted(ConvertedModel(config.kind, config, params, extras), path)
    return sum(a.nbytes for a in jax.tree.leaves(params))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def kept_size(path: str, config, dtype) -> int | None:
  """The size in bytes of a model an earlier run left in `path`, if it is this `config` in `dtype`; else None."""
  from kvjax.conversion.store import WeightsError, check_converted
  try:
    checked = check_converted(path, config.kind, config)
  except WeightsError:
    return None
  leaves = jax.tree.leaves(checked.stored["params"], is_leaf=lambda x: hasattr(x, "shape"))
  if {np.dtype(leaf.dtype) for leaf in leaves} != {dtype}:
    return None
  return sum(int(np.prod(leaf.shape)) * dtype.itemsize for leaf in leaves)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--preset", default="keyframe-1.1")
  parser.add_argument("--channels", type=int, help="model_channels (and init_channels) instead of the preset's")
  parser.add_argument("--set", action="append", default=[], metavar="FIELD=INT",
                      help="another integer field of the model's config, e.g. d_model=1024 for flan-ul2-encoder")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
  parser.add_argument("--ways", default="verify,sample,init,offload,before")
  parser.add_argument("--workdir", default=None)
  parser.add_argument("--write", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  config = model_configs.get_preset(args.preset)
  if args.channels:
    config = dataclasses.replace(config, model_channels=args.channels, init_channels=args.channels)
  for item in args.set:
    field, value = item.split("=")
    config = dataclasses.replace(config, **{field: int(value)})
  if config.kind not in ("keyframe_unet", "interpolation_unet", "t5_encoder"):
    parser.error(f"--preset {args.preset}: a UNet or the text encoder")
  dtype = np.dtype(jax.numpy.dtype(args.dtype))
  workdir = os.path.abspath(args.workdir or tempfile.mkdtemp(prefix="kvjax-bench-"))
  path = os.path.join(workdir, "model")
  start = time.perf_counter()
  if args.write:  # the writer's own process: a child's ru_maxrss starts from its parent's, so this one must
    shutil.rmtree(path, ignore_errors=True)  # not have held the model when the loads are measured
    size = write_model(path, config, dtype)
    print("SIZE", size)
    return
  size = kept_size(path, config, dtype)
  if size is None:
    argv = ["--preset", args.preset, "--dtype", args.dtype]
    argv += ["--channels", str(args.channels)] if args.channels else []
    argv += [f"--set={item}" for item in args.set]
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--workdir", workdir, "--write"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    if proc.returncode:
      print(proc.stdout, proc.stderr, file=sys.stderr)
      raise SystemExit("writing the model failed")
    size = int(proc.stdout.split("SIZE")[1].split()[0])
  what = " ".join([args.preset, *([f"with {args.channels} channels"] if args.channels else []), *args.set])
  print(f"{path}: {what}, {args.dtype}, "
        f"{size / GIB:.2f} GiB, ready in {time.perf_counter() - start:.0f} s", flush=True)
  print(f"\n{'way':<8} {'model GiB':>10} {'before GiB':>11} {'peak GiB':>9} {'load GiB':>9} {'load/model':>11} "
        f"{'seconds':>8}", flush=True)
  for way in args.ways.split(","):
    figures, seconds = measured_child([CHILD, way, path], f"loading ({way})", env={**os.environ, "PYTHONPATH": REPO})
    peak, before = figures["PEAK_KIB"], figures["BEFORE_KIB"]
    print(f"{way:<8} {size / GIB:>10.2f} {before / GIB:>11.2f} {peak / GIB:>9.2f} {(peak - before) / GIB:>9.2f} "
          f"{(peak - before) / size:>11.2f} {seconds:>8.0f}", flush=True)
  if not args.workdir:
    shutil.rmtree(workdir)


if __name__ == "__main__":
  main()
