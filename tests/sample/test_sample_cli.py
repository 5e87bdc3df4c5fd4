import os

import numpy as np
import pytest
from PIL import Image

from sample.__main__ import main
from sample.writers import write_frames


def _adapter(path, pipeline):
  """A LoRA adapter file for the keyframe UNet of a pipeline preset (B non-zero: it changes the UNet)."""
  import jax
  from kvjax.conversion.adapters import write_adapter
  from kvjax.models.lora import LoraConfig, abstract_adapters, init_adapters
  from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS
  config, lora = PIPELINE_PRESETS[pipeline].keyframe, LoraConfig(rank=2)
  adapters = jax.tree.map(lambda x: x if x.any() else np.full(x.shape, 0.01, np.float32),
                          init_adapters(abstract_adapters(config, lora), lora))
  write_adapter(str(path), adapters, unet_config=config, lora=lora, pipeline=pipeline, step=1)
  return path


def test_runs_end_to_end_with_random_weights_and_says_so(tmp_path, capsys):
  out = tmp_path / "frames"
  # Applied at run time over an int8 keyframe UNet kept in host memory: the one run covers the adapters' placement
  # under --offload and their merge into int8 kernels inside the compiled stages (merging at load is
  # with_adapters' default, tests/kvjax/test_lora.py).
  adapter = _adapter(tmp_path / "style.safetensors", "tiny")
  assert main(["a red fox", "--out", str(out), "--weights", "random", "--no-compile-cache", "--width", "32", "--height", "32",
               "--steps", "2", "2", "2", "--lora", f"{adapter}:0.5", "--lora-mode", "runtime", "--offload",
               "--quantize", "keyframe=int8"]) == 0
  captured = capsys.readouterr()
  assert "RANDOM weights" in captured.err and "base frames" in captured.err
  assert f"LoRA: {adapter} (rank 2 on self_attention,cross_attention of the keyframe_unet, step 1) at scale 0.5" in captured.err
  assert sorted(os.listdir(out)) == [f"{i:04d}.png" for i in range(12)]
  frame = np.asarray(Image.open(out / "0000.png"))
  assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8


@pytest.mark.parametrize("suffix", [".gif", ".mp4", ""])
def test_writers_produce_whole_files(tmp_path, suffix):
  frames = np.random.default_rng(0).integers(0, 255, (5, 32, 48, 3), dtype=np.uint8)
  path = write_frames(frames, str(tmp_path / f"clip{suffix}"))
  assert os.listdir(tmp_path) == [f"clip{suffix}"]  # no staging left behind
  if suffix == ".gif":
    with Image.open(path) as gif:
      assert gif.n_frames == 5 and gif.size == (48, 32) and gif.info["duration"] == 1100  # 5.5 s
    write_frames(frames, str(tmp_path / "long.gif"), seconds=11.0)  # a longer video keeps the frame rate it is given
    with Image.open(tmp_path / "long.gif") as gif:
      assert gif.info["duration"] == 2200
  elif suffix == ".mp4":
    assert os.path.getsize(path) > 1000
  else:
    assert len(os.listdir(path)) == 5


@pytest.mark.parametrize("argv,message", [
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--width", "48"], "multiples of 32"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--width", "0"], "multiples of 32"),
    (["x", "--out", "{tmp}/v.avi"], "use a .mp4 or .gif file"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "{tmp}/empty"], "no tokenizer"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "{tmp}/none"], "--weights {tmp}/none: no such folder"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "{tmp}/none", "--tokenizer", "{tmp}/taken.gif"], "no such folder"),
    (["x", "--out", "{tmp}/taken.gif"], "exists; pass --overwrite"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "{tmp}/badweights"], "sampling.json: not JSON"),
    (["x", "--out", "{tmp}/v.gif", "--image", "{tmp}/taken.gif", "{tmp}/taken.gif"], "one image or one per prompt"),
    (["x", "--out", "{tmp}/v.gif", "--image", "{tmp}/missing.png"], "no such file"),
    (["x", "--out", "{tmp}/v.gif", "--image", "{tmp}/corrupt.png"], "not a readable image"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--mesh", "data=3"], "--mesh: mesh 'data=3' has 3 devices"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--mesh", "pipe=2"], "--mesh: mesh 'pipe=2': expected"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--quantize", "int4"], "--quantize 'int4': expected int8"),
    (["x", "--out", "{tmp}/v.gif", "--quantize", "projections=int8"], "--quantize 'projections=int8': expected"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--lora", "{tmp}/none.safetensors"],
     "--lora {tmp}/none.safetensors: no such file"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--lora", "{tmp}/other.safetensors:strong"],
     "--lora {tmp}/other.safetensors:strong: the scale 'strong' is not a number"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--lora", "{tmp}/taken.gif"],
     "--lora {tmp}/taken.gif: not a readable safetensors file"),
    (["x", "--out", "{tmp}/v.gif", "--weights", "random", "--lora", "{tmp}/other.safetensors"],
     "--lora {tmp}/other.safetensors: made for a keyframe_unet of another configuration than this pipeline's"),
])
def test_bad_arguments_are_named_and_leave_nothing(tmp_path, capsys, argv, message):
  (tmp_path / "taken.gif").write_bytes(b"keep")
  (tmp_path / "corrupt.png").write_bytes(b"\x89PNG garbage")
  (tmp_path / "badweights").mkdir()
  (tmp_path / "badweights" / "sampling.json").write_text("{width: 64")
  (tmp_path / "empty").mkdir()
  if "--lora" in argv:
    _adapter(tmp_path / "other.safetensors", "tiny-two-level")  # for another keyframe UNet than --weights random's
  before = sorted(os.listdir(tmp_path))
  assert main([a.format(tmp=tmp_path) for a in argv]) == 2
  assert message.format(tmp=tmp_path) in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path)) == before and (tmp_path / "taken.gif").read_bytes() == b"keep"


def test_unknown_option_is_refused(capsys):
  with pytest.raises(SystemExit) as exit_info:
    main(["x", "--out", "v.gif", "--frames", "9"])
  assert exit_info.value.code == 2 and "unrecognized arguments: --frames" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_info:  # a choice the program does not have
    main(["x", "--out", "v.gif", "--cache-schedule", "middle"])
  assert exit_info.value.code == 2 and "argument --cache-schedule: invalid choice: 'middle'" in capsys.readouterr().err


def test_options_given_win_over_the_weights_folders_sampling_json_which_wins_over_the_defaults():
  """Any GenerationOptions field in sampling.json (the demo's image guidance among them) is a default that an
  option given on the command line overrides."""
  from sample.__main__ import _parser, generation_options
  recommended = {"sampler": "ddpm", "guidance_weight_image": 5.0, "seed": 3, "key_frame_steps": 50, "keep_image": True}
  options = generation_options(_parser().parse_args(["x", "--out", "v.gif"]), recommended)
  assert (options.sampler, options.guidance_weight_image, options.seed, options.key_frame_steps) == ("ddpm", 5.0, 3, 50)
  assert options.guidance_weight_prompt == 5.0 and options.fps == "low"  # GenerationOptions' own
  assert options.keep_image and not generation_options(_parser().parse_args(["x", "--out", "v.gif"]), {}).keep_image
  given = _parser().parse_args(["x", "--out", "v.gif", "--image-guidance", "2", "--seed", "0", "--fps", "medium",
                                "--no-keep-image", "--windows", "3"])
  options = generation_options(given, recommended)
  assert (options.guidance_weight_image, options.seed, options.fps, options.sampler) == (2.0, 0, "medium", "ddpm")
  assert options.windows == 3 and options.num_frames == 45 + 44 + 44
  assert not options.keep_image
  # --seconds: the fewest windows lasting that long at the chosen fps (5.5 s a window, at one window's rate)
  seconds = lambda *argv: generation_options(_parser().parse_args(["x", "--out", "v.gif", *argv]), {})
  assert seconds("--seconds", "5.5").windows == 1 and seconds("--seconds", "5.6").windows == 2
  assert seconds("--seconds", "15", "--fps", "medium").windows == 3  # 45 + 44 + 44 frames: 16.3 s
  assert seconds("--seconds", "15.5").windows == 3 and seconds("--seconds", "15.6").windows == 4  # 34 frames: 15.58 s
