"""The dense FLOPs of a program, counted from its jaxpr: what bench/sample_memory.py reports per stage, and
what the feature-cache tests and bench/feature_cache.py compare between full and cached denoising steps."""

from __future__ import annotations

import math
import re
from typing import Sequence

from jax.extend import core as jax_core


def dense_flops(closed, full_steps: Sequence[bool] | None = None, scope: str | None = None) -> float:
  """2 x multiply-adds of every dot_general and convolution of a jaxpr; a scan's body times its length, a
  cond's costliest branch. (Denoising loops are fori_loops of static length, which trace to scans.)

  `full_steps` (a feature-cache schedule, kvjax.diffusion.feature_cache): inside a scan of that length (the
  denoising loop), a cond counts its full branch (the second) on the schedule's full steps and its cached
  branch (the first) on the others, instead of the costliest every step.

  `scope` (a regular expression): only the operations whose name stack (flax module path, e.g.
  ".../down_samples_1/resnet_attn_blocks_0_1/attention/to_query") it matches (re.search).
  """
  return _count(closed, full_steps, None, scope and re.compile(scope), "")


def _count(closed, full_steps, share, scope=None, prefix="") -> float:
  total = 0.0
  for eqn in getattr(closed, "jaxpr", closed).eqns:
    name, out = eqn.primitive.name, eqn.outvars[0].aval.shape if eqn.outvars else ()
    stack = f"{prefix}/{eqn.source_info.name_stack}" if scope else ""
    if name in ("dot_general", "conv_general_dilated") and scope and not scope.search(stack):
      continue
    if name == "dot_general":
      (contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(out) * math.prod(lhs[i] for i in contracting)
    elif name == "conv_general_dilated":
      rhs, spec = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"].rhs_spec  # (out, in, spatial...)
      total += 2.0 * math.prod(out) * rhs[spec[1]] * math.prod(rhs[i] for i in spec[2:])
    elif name == "while":
      raise ValueError("a while loop of unknown trip count: its FLOPs cannot be counted from the jaxpr")
    elif "branches" in eqn.params:
      branches = [_count(branch, full_steps, None, scope, stack) for branch in eqn.params["branches"]]
      total += max(branches) if share is None else share * branches[1] + (1 - share) * branches[0]
    else:
      trips = eqn.params["length"] if name == "scan" else 1
      inner = share
      if name == "scan" and full_steps is not None and trips == len(full_steps):
        inner = sum(full_steps) / trips  # the fraction of the loop's steps that run the full branch
      for value in eqn.params.values():
        if isinstance(value, (jax_core.ClosedJaxpr, jax_core.Jaxpr)):
          total += trips * _count(value, full_steps, inner, scope, stack)
  return total
