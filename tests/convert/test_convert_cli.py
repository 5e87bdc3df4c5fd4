import json
import os
import shutil

import flax.traverse_util
import ml_dtypes
import numpy as np
import pytest

from testing_utils import KEYFRAME_FIXTURE, write_raw
from convert.__main__ import main
from kvjax import model_configs
from kvjax.checkpoints import flatten_state_dict, read_checkpoint
from kvjax.conversion.unet import TRANSPOSED_CONVS
from kvjax.conversion.naming import torch_key, torch_module_path
from kvjax.conversion.state_dict import ConversionError, convert_state_dict
from kvjax.conversion.store import load_converted
from kvjax.parity import find_manifests

T2V = os.path.join(KEYFRAME_FIXTURE, "t2v.pt")
CFG = model_configs.KEYFRAME_TINY


def test_naming_rule_round_trips():
  key = "down_samples.1.resnet_attn_blocks.0.3.temporal_resnet_blocks.2.0.context_mlp.1.weight"
  modules, leaf = torch_module_path(key)
  assert modules == ("down_samples_1", "resnet_attn_blocks_0_3", "temporal_resnet_blocks_2_0",
                     "context_mlp_1")
  assert leaf == "weight"
  assert torch_key(modules + ("kernel",)) == key


def test_convert_writes_a_loadable_checkpoint_with_every_weight(tmp_path):
  out = tmp_path / "keyframe"
  assert main(["keyframe", T2V, str(out), "--config", "keyframe-tiny"]) == 0
  meta = json.loads((out / "config.json").read_text())
  assert meta["kind"] == "keyframe_unet" and meta["config"] == CFG.to_dict() and meta["dtype"] == "float32"
  loaded = load_converted(out)
  assert loaded.config == CFG
  source = read_checkpoint(T2V)
  np.testing.assert_array_equal(loaded.extras["null_embedding"], source["null_embedding"].numpy())
  flat = flax.traverse_util.flatten_dict(loaded.params)
  state = flatten_state_dict(source["unet"])
  assert len(flat) == len(state)
  # Spot-check each layout rule against the PyTorch tensor.
  linear = state["to_time_embed.1.weight"].numpy()
  np.testing.assert_array_equal(flat[("to_time_embed_1", "kernel")], linear.T)
  conv = state["in_layer.weight"].numpy()
  np.testing.assert_array_equal(flat[("in_layer", "kernel")], conv.transpose(2, 3, 1, 0))
  key = "up_samples.1.resnet_attn_blocks.0.0.resnet_blocks.1.up_sample.weight"
  transposed = state[key].numpy()
  path = torch_module_path(key)[0] + ("kernel",)
  np.testing.assert_array_equal(flat[path], transposed.transpose(2, 3, 0, 1))
  key = "down_samples.0.resnet_attn_blocks.0.3.temporal_resnet_blocks.1.2.weight"
  temporal = state[key].numpy()
  np.testing.assert_array_equal(flat[torch_module_path(key)[0] + ("kernel",)], temporal.transpose(2, 3, 4, 1, 0))


@pytest.mark.parametrize("flag,dtype", [("bf16", ml_dtypes.bfloat16), ("fp16", np.float16)])
def test_convert_casts(tmp_path, flag, dtype):
  out = tmp_path / flag
  assert main(["keyframe", T2V, str(out), "--config", "keyframe-tiny", "--dtype", flag]) == 0
  loaded = load_converted(out)
  leaves = flax.traverse_util.flatten_dict(loaded.params).values()
  assert {leaf.dtype for leaf in leaves} == {np.dtype(dtype)}
  assert loaded.extras["null_embedding"].dtype == np.dtype(dtype)


def test_convert_writes_int8_kernels_and_refuses_models_without_them(tmp_path, capsys):
  from kvjax.quantization import is_int8
  out = tmp_path / "int8"
  assert main(["keyframe", T2V, str(out), "--config", "keyframe-tiny", "--dtype", "bf16", "--quantize", "int8"]) == 0
  assert "kernels in int8" in capsys.readouterr().out
  flat = flax.traverse_util.flatten_dict(load_converted(out).params)
  assert is_int8(flat[("to_time_embed_1", "kernel")]) and flat[("to_time_embed_1", "kernel")].values.dtype == np.int8
  assert flat[("in_layer", "kernel")].dtype == ml_dtypes.bfloat16  # kept in float, in the --dtype
  assert main(["projections", str(tmp_path / "p.pt"), str(tmp_path / "p"), "--quantize", "int8"]) == 2
  assert "--quantize: int8 weights are for" in capsys.readouterr().err and not (tmp_path / "p").exists()
  assert main(["all", str(tmp_path), str(tmp_path / "a"), "--quantize", "t5=int8,projections=int8"]) == 2
  assert "--quantize 't5=int8,projections=int8': expected" in capsys.readouterr().err


def test_configs_json_beside_the_checkpoint_is_used(tmp_path, keyframe_fixture, capsys):
  (keyframe_fixture / "model_configs.json").write_text(json.dumps({"t2v": {"configs": CFG.to_dict()}}))
  assert main(["keyframe", str(keyframe_fixture / "t2v.pt"), str(tmp_path / "out")]) == 0
  assert "model_configs.json" in capsys.readouterr().out


def _assert_nothing_written(parent, before):
  assert sorted(os.listdir(parent)) == before


def test_wrong_config_fails_naming_keys_and_writes_nothing(tmp_path, capsys):
  before = sorted(os.listdir(tmp_path))
  # The production preset does not fit the tiny checkpoint.
  assert main(["keyframe", T2V, str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert "mis-shaped keys" in err and "in_layer.weight: checkpoint (8, 9, 3, 3)" in err
  _assert_nothing_written(tmp_path, before)


def test_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep").write_text("mine")
  assert main(["keyframe", T2V, str(out), "--config", "keyframe-tiny"]) == 2
  assert "exists" in capsys.readouterr().err and (out / "keep").exists()
  assert main(["keyframe", T2V, str(out), "--config", "keyframe-tiny", "--overwrite"]) == 0
  assert not (out / "keep").exists() and (out / "config.json").exists()


def test_an_unwritable_output_is_refused_before_converting(tmp_path, capsys, monkeypatch):
  import kvjax.conversion.registry as registry
  (tmp_path / "file").write_text("x")
  converted = []
  monkeypatch.setattr(registry, "resolve_config", lambda *a: converted.append(a) or (None, ""))
  assert main(["keyframe", T2V, str(tmp_path / "file" / "out"), "--config", "keyframe-tiny"]) == 2
  assert "is a file, not a folder" in capsys.readouterr().err and not converted


def test_malicious_checkpoint_is_refused_by_the_converter(tmp_path, capsys):
  import zipfile
  bad = tmp_path / "t2v.pt"
  with zipfile.ZipFile(T2V) as zin, zipfile.ZipFile(bad, "w") as zout:
    for info in zin.infolist():
      data = b"cposix\nsystem\n(S'true'\ntR." if info.filename.endswith("data.pkl") else zin.read(info)
      zout.writestr(info.filename, data)
  before = sorted(os.listdir(tmp_path))
  assert main(["keyframe", str(bad), str(tmp_path / "out"), "--config", "keyframe-tiny"]) == 2
  assert "posix.system" in capsys.readouterr().err
  _assert_nothing_written(tmp_path, before)


def test_interpolation_converts_and_round_trips(tmp_path):
  src = os.path.join(os.path.dirname(KEYFRAME_FIXTURE), "interpolation_unet", "interpolation.pt")
  out = tmp_path / "interpolation"
  assert main(["interpolation", src, str(out), "--config", "interpolation-tiny"]) == 0
  loaded = load_converted(out)
  assert loaded.config == model_configs.INTERPOLATION_TINY and loaded.kind == "interpolation_unet"
  flat = flax.traverse_util.flatten_dict(loaded.params)
  assert flat[("skip_embeddings", "embedding")].shape == (20, 24)
  assert flat[("time_embed_merge",)].shape == (1,)


def test_missing_file_is_named(tmp_path, capsys):
  assert main(["keyframe", str(tmp_path / "absent.pt"), str(tmp_path / "out")]) == 2
  assert "absent.pt: no such file" in capsys.readouterr().err


def test_strictness_lists_missing_unexpected_and_misshaped_keys(tmp_path):
  state = dict(flatten_state_dict(read_checkpoint(T2V)["unet"]))
  state.pop("out_layer.2.bias")
  state["out_layer.5.weight"] = write_raw(tmp_path, "extra", np.zeros((3,), np.float32))
  state["in_layer.bias"] = write_raw(tmp_path, "short", np.zeros((7,), np.float32))
  with pytest.raises(ConversionError) as info:
    convert_state_dict(state, CFG, np.float32, TRANSPOSED_CONVS)
  message = str(info.value)
  assert "1 missing keys:\n  out_layer.2.bias (4,)" in message
  assert "1 unexpected keys:\n  out_layer.5.weight (3,)" in message
  assert "1 mis-shaped keys:\n  in_layer.bias: checkpoint (7,), model expects (8,)" in message


def test_verify_runs_every_fixture_of_a_folder(tmp_path, capsys):
  # Each fixture's parity is tested with its model; here, that a folder of fixtures is walked and counted.
  fixtures = os.path.dirname(KEYFRAME_FIXTURE)
  # (The two cheapest to compile: the UNets' fixtures are verified by their own tests.)
  for name in ("image_movq", "t5_encoder"):
    shutil.copytree(os.path.join(fixtures, name), tmp_path / name)
  cases = sum(len(json.load(open(m))["cases"]) for m in find_manifests(str(tmp_path)))
  assert main(["verify", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert out.count("ok  ") == cases and cases >= 4 and f"{cases} passed, 0 failed" in out
  assert "image_movq/decode_batch" in out and "t5_encoder/padded_batch" in out


def test_every_fixture_folder_has_a_verifier():
  from kvjax.parity import CASE_RUNNERS
  for manifest in find_manifests(os.path.dirname(KEYFRAME_FIXTURE)):
    assert json.load(open(manifest))["model"] in CASE_RUNNERS, manifest


def test_verify_fails_when_the_reference_disagrees(tmp_path, capsys):
  # The image MoVQ's fixture (its compiles are the cheapest of the UNet-free ones): one case's reference
  # output off by 0.1% fails by name, the others still pass.
  folder = tmp_path / "image_movq"
  shutil.copytree(os.path.join(os.path.dirname(KEYFRAME_FIXTURE), "image_movq"), folder)
  case = folder / "decode_single.npz"
  data = dict(np.load(case))
  data["out/images"] = data["out/images"] * 1.001
  np.savez(case, **data)
  assert main(["verify", str(folder)]) == 1
  out = capsys.readouterr().out
  assert "FAIL image_movq/decode_single" in out and "ok   image_movq/encode" in out


def test_info_prints_exact_production_counts(capsys):
  from kvjax.__main__ import main as kvjax_main
  assert kvjax_main(["info"]) == 0
  out = capsys.readouterr().out
  for name, published in model_configs.PUBLISHED_PARAMETER_COUNTS.items():
    assert f"{published:>15} {published:>15}" in out.split(name, 1)[1].splitlines()[0], name
