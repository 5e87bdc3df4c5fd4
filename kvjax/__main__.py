"""`python -m kvjax info`: the presets and their parameter counts, computed abstractly (no weights)."""

from __future__ import annotations

import argparse
import sys


def info() -> int:
  from kvjax import model_configs
  from kvjax.params import abstract_params, count_params
  print(f"{'preset':<26} {'model':<20} {'parameters':>15} {'published':>15}")
  mismatches = 0
  for name, config in {**model_configs.PRODUCTION_PRESETS, **model_configs.TINY_PRESETS}.items():
    count = count_params(abstract_params(config))
    published = model_configs.PUBLISHED_PARAMETER_COUNTS.get(name)
    mismatches += published is not None and published != count
    print(f"{name:<26} {config.kind:<20} {count:>15} {'' if published is None else published:>15}")
  return 1 if mismatches else 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m kvjax")
  parser.add_argument("command", choices=["info"], help="info: presets and exact parameter counts")
  parser.parse_args(argv)
  return info()


if __name__ == "__main__":
  sys.exit(main())
