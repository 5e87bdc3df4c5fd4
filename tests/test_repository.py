"""What the repository may hold: no file tracked by git over 2 MB, except the parity fixtures (tests/fixtures/)
and the shipped demo weights (kvjax/demo/weights/, at most 30 MB in all). Intermediate weights, datasets and
run outputs stay out of the tree."""

from __future__ import annotations

import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_FILE_BYTES = 2_000_000
ALLOWED_LARGE = ("tests/fixtures/", "kvjax/demo/weights/")
DEMO_WEIGHTS = "kvjax/demo/weights/"
MAX_DEMO_WEIGHTS_BYTES = 30_000_000


@pytest.fixture(scope="module")
def tracked() -> dict[str, int]:
  """Tracked path (relative to the repository root) -> its size on disk; files deleted but not committed are
  left out."""
  try:
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout")
  if pathlib.Path(top).resolve() != ROOT:
    pytest.skip("the tests are not at the root of a git checkout")
  paths = [p.decode() for p in listing.split(b"\0") if p]
  return {p: (ROOT / p).lstat().st_size for p in paths if (ROOT / p).is_file() and not (ROOT / p).is_symlink()}


def test_no_large_file_outside_the_fixtures_and_the_demo_weights(tracked):
  large = sorted(f"{path} ({size / 1e6:.1f} MB)" for path, size in tracked.items()
                 if size > MAX_FILE_BYTES and not path.startswith(ALLOWED_LARGE))
  assert not large, (f"tracked files over {MAX_FILE_BYTES / 1e6:g} MB outside {', '.join(ALLOWED_LARGE)} "
                     f"(weights, datasets and run outputs stay out of the tree):\n" + "\n".join(large))


def test_the_demo_weights_stay_small(tracked):
  total = sum(size for path, size in tracked.items() if path.startswith(DEMO_WEIGHTS))
  assert total <= MAX_DEMO_WEIGHTS_BYTES, (
      f"{DEMO_WEIGHTS} holds {total / 1e6:.1f} MB, over {MAX_DEMO_WEIGHTS_BYTES / 1e6:g} MB")
