"""The error of computing in bfloat16, against the reference's float32 outputs, on every parity fixture.

  python bench/bf16_error.py [tests/fixtures]

Each row is one fixture case: the relative L2 error of our float32 run (the parity check) and of the same
weights computed in bfloat16 (`python -m sample --bf16`, `TextToVideo(..., dtype=jnp.bfloat16)`).
Parameters stay as converted; softmaxes and norms compute in float32 in both.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax.numpy as jnp  # noqa: E402

from kvjax.parity import find_manifests, verify_fixture  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("fixtures", nargs="?", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures"))
  args = p.parse_args(argv)
  print(f"{'case':<44} {'fp32 rel L2':>12} {'bf16 rel L2':>12} {'bf16 max abs':>13}")
  for manifest in find_manifests(args.fixtures):
    fp32 = {r.name: r for r in verify_fixture(manifest)}
    for r in verify_fixture(manifest, jnp.bfloat16):
      base = fp32.get(r.name)
      if r.error or base is None or base.error:
        print(f"{r.name:<44} {'':>12} {'':>12} {r.error or (base.error if base else 'missing')}")
        continue
      print(f"{r.name:<44} {base.rel_l2_error:12.2e} {r.rel_l2_error:12.2e} {r.max_abs_error:13.3e}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
