import json
import os

import pytest

from data_testing_utils import moving_frames, write_video
from kvjax.data.prepare import PrepareConfig, prepare
from kvjax.data.transforms import TransformConfig


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("train_data")
  videos = root / "videos"
  videos.mkdir()
  for seed in range(4):
    write_video(videos / f"pan{seed}.mp4", moving_frames(240, 320, 72, seed=seed, pixels_per_frame=seed), 24)
  (root / "captions.jsonl").write_text("".join(
      json.dumps({"source": f"pan{seed}.mp4", "caption": f"a field panned at speed {seed}"}) + "\n" for seed in range(4)))
  config = PrepareConfig(transform=TransformConfig(target_short_side=64))
  summary = prepare(str(videos), str(root / "prepared"), captions_path=str(root / "captions.jsonl"), config=config,
                    progress=False, seed=0)
  assert summary.clips_kept == 4
  return root / "prepared"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  # A persistent compilation cache: the killed and the resumed run reuse the first run's executables (process
  # 0's only: on CPU each process of a multi-process run has its own cache key, and only process 0 writes).
  # XLA without most of its optimisations (LLVM at -O0): these programs run a few steps, and compiling them is
  # most of their time; every run of a test compiles alike, so the runs they compare stay bit-identical.
  cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or tmp_path_factory.mktemp("jax_cache")  # the run's (tests/conftest.py)
  return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_COMPILATION_CACHE_DIR": str(cache),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
          "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


