"""T5 encoder compile time against depth: the blocks unrolled (the converted layout) or scanned (the pipeline's).

  python bench/t5_compile.py [--layers 2 24] [--d-model 256]

Prints one row per (layers, layout): seconds to lower and compile the forward at FLAN-UL2's 128 tokens,
and the scanned output's largest difference from the unrolled one.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from kvjax import model_configs  # noqa: E402
from kvjax.models.t5_encoder import T5Encoder, scan_layout  # noqa: E402
from kvjax.params import random_params  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layers", type=int, nargs="+", default=[2, 24])
  p.add_argument("--d-model", type=int, default=256)
  args = p.parse_args(argv)
  d = args.d_model
  ids = np.tile(np.arange(1, 129, dtype=np.int32) % 100, (2, 1))
  mask = np.ones_like(ids, bool)
  print(f"{'layers':>6} {'layout':>9} {'compile s':>10} {'max |scanned - unrolled|':>25}")
  for layers in args.layers:
    cfg = dataclasses.replace(model_configs.FLAN_UL2_ENCODER, vocab_size=512, d_model=d, d_kv=d // 8, d_ff=2 * d,
                              num_layers=layers, num_heads=8)
    params = random_params(cfg, 0)
    outputs = {}
    for layout, scanned in (("unrolled", False), ("scanned", True)):
      model = T5Encoder(cfg, scan_layers=scanned)
      weights = scan_layout(params, layers) if scanned else params
      forward = jax.jit(lambda w, ids, mask: model.apply({"params": w}, ids, mask))
      start = time.perf_counter()
      compiled = forward.lower(weights, ids, mask).compile()
      seconds = time.perf_counter() - start
      outputs[layout] = np.asarray(compiled(weights, ids, mask))
      difference = "" if layout == "unrolled" else f"{np.abs(outputs['scanned'] - outputs['unrolled']).max():.2e}"
      print(f"{layers:>6} {layout:>9} {seconds:>10.2f} {difference:>25}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
