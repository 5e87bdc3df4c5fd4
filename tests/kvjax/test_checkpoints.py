import json
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from testing_utils import KEYFRAME_FIXTURE
from kvjax.checkpoints import CheckpointError, LazyTensor, flatten_state_dict, read_checkpoint

T2V = os.path.join(KEYFRAME_FIXTURE, "t2v.pt")


def _rewrite_pickle(src, dst, payload: bytes):
  """Copies a torch zip archive, replacing its data.pkl."""
  with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
    for info in zin.infolist():
      data = payload if info.filename.endswith("/data.pkl") else zin.read(info)
      zout.writestr(info.filename, data)


def test_reads_official_container_lazily():
  container = read_checkpoint(T2V)
  assert set(container) == {"unet", "null_embedding"}
  flat = flatten_state_dict(container["unet"])
  assert len(flat) == 1482
  weight = flat["in_layer.weight"]
  assert isinstance(weight, LazyTensor) and weight.shape == (8, 9, 3, 3) and weight.dtype == np.float32
  values = weight.numpy()
  assert values.shape == (8, 9, 3, 3) and np.isfinite(values).all() and values.std() > 0


def test_tensor_values_match_the_archive_bytes():
  """Decode one storage by hand from the zip entry and compare with the reader's view of it."""
  container = read_checkpoint(T2V)
  null = container["null_embedding"]
  with zipfile.ZipFile(T2V) as z:
    entries = [n for n in z.namelist() if "/data/" in n]
    raw = {n: np.frombuffer(z.read(n), np.float32) for n in entries}
  assert any(np.array_equal(null.numpy(), r[: null.size]) for r in raw.values() if r.size == null.size)


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
  marker = tmp_path / "pwned"
  payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
  bad = tmp_path / "bad.pt"
  _rewrite_pickle(T2V, bad, payload)
  with pytest.raises(CheckpointError, match="os.system"):
    read_checkpoint(bad)
  assert not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps({"a": __import__("datetime").date(2020, 1, 1)}, protocol=2),
    b"cbuiltins\neval\n(S'1+1'\ntR.",
])
def test_any_other_global_is_refused(tmp_path, payload):
  bad = tmp_path / "bad.pt"
  _rewrite_pickle(T2V, bad, payload)
  with pytest.raises(CheckpointError, match="refused to load global"):
    read_checkpoint(bad)


def test_legacy_bare_pickle_is_refused(tmp_path):
  legacy = tmp_path / "legacy.pt"
  legacy.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=2))
  with pytest.raises(CheckpointError, match="legacy"):
    read_checkpoint(legacy)


def test_truncated_archive(tmp_path):
  data = open(T2V, "rb").read()
  cut = tmp_path / "cut.pt"
  cut.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="truncated or corrupt"):
    read_checkpoint(cut)


def test_garbage_missing_and_directory(tmp_path):
  garbage = tmp_path / "garbage.pt"
  garbage.write_bytes(b"garbage " + bytes(range(256)) * 16)  # fixed: random bytes may open like a pickle (0x80)
  with pytest.raises(CheckpointError, match="not a PyTorch zip checkpoint"):
    read_checkpoint(garbage)
  with pytest.raises(CheckpointError, match="no such file"):
    read_checkpoint(tmp_path / "absent.pt")
  with pytest.raises(CheckpointError, match="is a directory"):
    read_checkpoint(tmp_path)


def test_corrupt_pickle_bytes(tmp_path):
  bad = tmp_path / "bad.pt"
  _rewrite_pickle(T2V, bad, b"\x80\x02}q\x00(X\x04\x00\x00\x00unet")
  with pytest.raises(CheckpointError, match="corrupt checkpoint pickle"):
    read_checkpoint(bad)


def test_tensor_past_its_storage_is_refused(tmp_path):
  with zipfile.ZipFile(T2V) as z:
    name = next(n for n in z.namelist() if n.endswith("data.pkl"))
    data = z.read(name)
  # The first tensor is stored as size (32, 8), stride (8, 1): claim 33 rows instead.
  patched = data.replace(b"K K\x08\x86", b"K!K\x08\x86", 1)
  assert patched != data
  bad = tmp_path / "bad.pt"
  _rewrite_pickle(T2V, bad, patched)
  with pytest.raises(CheckpointError, match="past the end of storage"):
    read_checkpoint(bad)


def _write_safetensors(path, tensors: dict[str, np.ndarray]):
  names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(ml_dtypes.bfloat16): "BF16"}
  header, blobs, offset = {}, [], 0
  for key, value in tensors.items():
    blob = np.ascontiguousarray(value).tobytes()
    header[key] = {"dtype": names[value.dtype], "shape": list(value.shape),
                   "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
  encoded = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def test_safetensors_round_trip_including_bf16(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {"a.weight": rng.normal(size=(3, 4)).astype(np.float32),
             "b": rng.normal(size=(5,)).astype(ml_dtypes.bfloat16),
             "c": rng.normal(size=(2, 2, 2)).astype(np.float16)}
  path = tmp_path / "model.safetensors"
  _write_safetensors(path, tensors)
  loaded = read_checkpoint(path)
  assert set(loaded) == set(tensors)
  for key, value in tensors.items():
    assert loaded[key].dtype == value.dtype
    np.testing.assert_array_equal(loaded[key].numpy(), value)


def test_safetensors_written_by_the_library(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  tensors = {"x": np.arange(12, dtype=np.float32).reshape(3, 4)}
  path = tmp_path / "lib.safetensors"
  safetensors_numpy.save_file(tensors, str(path))
  np.testing.assert_array_equal(read_checkpoint(path)["x"].numpy(), tensors["x"])


def test_safetensors_out_of_bounds_is_refused(tmp_path):
  path = tmp_path / "bad.safetensors"
  _write_safetensors(path, {"x": np.zeros((4,), np.float32)})
  data = path.read_bytes()
  path.write_bytes(data[:-4])
  with pytest.raises(CheckpointError, match="outside the file"):
    read_checkpoint(path)
