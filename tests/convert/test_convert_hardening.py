"""Bad checkpoints are refused clearly: one line naming the file and the member or tensor, exit code 2 from
`python -m convert`, nothing written. Every bad input is built here, small, in tmp_path."""

import io
import json
import os
import pickle
import resource
import struct
import time
import zipfile
import zlib

import numpy as np
import pytest

from testing_utils import KEYFRAME_FIXTURE
from convert.__main__ import _parser, main
from kvjax import model_configs
from kvjax.checkpoints import CheckpointError, flatten_state_dict, read_checkpoint
from kvjax.checkpoints.torch_zip_writer import _PickleWriter, write_torch_zip
from kvjax.conversion.store import load_converted

CFG = model_configs.TEXT_PROJECTIONS_TINY
GB = 2**30


# --- building bad inputs ---------------------------------------------------------------------------------


def _projections(dtype=np.float32, seed=0):
  rng = np.random.default_rng(seed)
  head = lambda: {"0.weight": rng.normal(size=(CFG.context_dim, CFG.in_dim)).astype(dtype),
                  "1.weight": rng.normal(size=(CFG.context_dim,)).astype(np.float32),
                  "1.bias": rng.normal(size=(CFG.context_dim,)).astype(np.float32)}
  return {"projection_base": head(), "projection_interpolation": head()}


class _Bits:
  """Deflate's bit order: fields least-significant bit first, Huffman codes most-significant bit first."""

  def __init__(self):
    self.bits = []

  def field(self, value, n):
    self.bits += [(value >> i) & 1 for i in range(n)]

  def code(self, value, n):
    self.bits += [(value >> i) & 1 for i in reversed(range(n))]

  def copy_258_at_distance_1(self):
    self.code(0b11000101, 8)  # fixed Huffman length symbol 285 (258 bytes)
    self.code(0, 5)  # distance symbol 0 (distance 1)

  def pack(self):
    assert len(self.bits) % 8 == 0
    return bytes(sum(b << i for i, b in enumerate(self.bits[k:k + 8])) for k in range(0, len(self.bits), 8))


def deflate_bomb(size: int) -> tuple[bytes, int]:
  """A raw deflate stream of about `size` zero bytes, at deflate's best ratio (1032:1), built directly;
  returns the stream and the exact size it inflates to."""
  head = _Bits()
  head.field(1, 1)  # last block
  head.field(1, 2)  # fixed Huffman codes
  head.code(0x30, 8)  # literal 0
  head.copy_258_at_distance_1()  # 24 bits so far: the periodic part starts byte-aligned
  period = _Bits()
  for _ in range(8):  # 8 codes of 13 bits: 13 bytes
    period.copy_258_at_distance_1()
  repeats = max(1, (size - 259) // (258 * 8))
  tail = _Bits()
  tail.code(0, 7)  # end of block
  tail.field(0, 1)
  stream = head.pack() + period.pack() * repeats + tail.pack()
  return stream, 1 + 258 + 258 * 8 * repeats


def raw_zip(path, members):
  """A zip written byte by byte: `members` are (name, stored bytes, method, declared size, crc), so headers
  can say anything."""
  body, central = io.BytesIO(), io.BytesIO()
  for name, data, method, declared, crc in members:
    offset = body.tell()
    encoded = name.encode()
    body.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), declared,
                           len(encoded), 0) + encoded + data)
    central.write(struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(data),
                              declared, len(encoded), 0, 0, 0, 0, 0, offset) + encoded)
  directory = central.getvalue()
  end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory),
                    body.tell(), 0)
  with open(path, "wb") as f:
    f.write(body.getvalue() + directory + end)


def torch_zip_with_pickle(path, data_pkl: bytes, storages=()):
  """A torch.save-layout archive with the given data.pkl (and storages: (key, bytes))."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
    archive.writestr("archive/data.pkl", data_pkl)
    archive.writestr("archive/byteorder", b"little")
    for key, data in storages:
      archive.writestr(f"archive/data/{key}", data)


def _run(argv, capsys):
  code = main(argv)
  return code, capsys.readouterr()


def _error_line(err: str) -> str:
  errors = [line for line in err.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, err
  return errors[0]


def _assert_refused(argv, capsys, *needles):
  """Runs the CLI, which must exit 2 with one error line holding every needle, and leave no output."""
  out = argv[2]
  parent = os.path.dirname(out)
  before = sorted(os.listdir(parent))
  start = time.perf_counter()
  code, captured = _run(argv, capsys)
  elapsed = time.perf_counter() - start
  assert code == 2, captured
  line = _error_line(captured.err)
  for needle in needles:
    assert needle in line, line
  assert not os.path.exists(out)
  assert sorted(os.listdir(parent)) == before  # and no hidden .NAME.partial-* staging left
  assert not [n for n in os.listdir(parent) if ".partial" in n]
  return line, elapsed


# --- 1. bounded reading of zip members -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb_stream():
  stream, inflated = deflate_bomb(2 * GB)
  assert len(stream) < 14 * 2**20 and inflated >= 2 * GB - 4096
  inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # the stream is valid deflate: zeros
  assert inflater.decompress(stream[:8192], 2**20) == bytes(2**20)
  return stream, inflated


def _maxrss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("declared", ["honest", "lying"])
def test_deflated_pickle_bomb_is_refused_quickly_in_little_memory(tmp_path, capsys, bomb_stream, declared):
  stream, inflated = bomb_stream
  # Honest: the header declares the 2 GB it inflates to (over the pickle bound). Lying: it declares 1 MiB.
  size = inflated if declared == "honest" else 2**20
  bomb = tmp_path / "src" / "t5_projections.pt"
  bomb.parent.mkdir()
  raw_zip(bomb, [("archive/data.pkl", stream, zipfile.ZIP_DEFLATED, size, 0)])
  rss = _maxrss_mb()
  line, elapsed = _assert_refused(["projections", str(bomb), str(tmp_path / "out"), "--config",
                                   "t5-projections-tiny"], capsys, str(bomb), "archive/data.pkl")
  assert _maxrss_mb() - rss < 500 and elapsed < 10
  assert ("more than the 268435456 this reader accepts" in line if declared == "honest"
          else "inflates to more than the 1048576 bytes its header declares" in line)


def test_member_headers_that_lie_are_refused(tmp_path):
  payload = pickle.dumps({}, protocol=2)
  deflated = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
  deflated = deflated.compress(payload) + deflated.flush()
  cases = {
      "short": ([("archive/data.pkl", deflated, zipfile.ZIP_DEFLATED, len(payload) + 10, zlib.crc32(payload))],
                f"holds {len(payload)} bytes, its header declares {len(payload) + 10}"),
      "stored": ([("archive/data.pkl", payload, zipfile.ZIP_STORED, len(payload) - 1, zlib.crc32(payload))],
                 f"declares {len(payload) - 1} bytes but stores {len(payload)}"),
      "crc": ([("archive/data.pkl", payload, zipfile.ZIP_STORED, len(payload), 1234)], "fails its CRC"),
      "method": ([("archive/data.pkl", payload, zipfile.ZIP_BZIP2, len(payload), zlib.crc32(payload))],
                 "zip method 12"),
      "cut": ([("archive/data.pkl", deflated[:5], zipfile.ZIP_DEFLATED, len(payload), zlib.crc32(payload))],
              "archive/data.pkl"),
  }
  for name, (members, message) in cases.items():
    path = tmp_path / f"{name}.pt"
    raw_zip(path, members)
    with pytest.raises(CheckpointError, match=message) as info:
      read_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value), name


def test_deflated_small_members_are_read(tmp_path):
  # Valid deflated members (not what torch.save writes, but a zip tool might) still read.
  path = tmp_path / "deflated.pt"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
    archive.writestr("archive/data.pkl", pickle.dumps({"a": [1, 2]}, protocol=2))
    archive.writestr("archive/byteorder", b"little")
  assert read_checkpoint(path) == {"a": [1, 2]}


def test_duplicate_and_encrypted_members_are_refused(tmp_path):
  path = tmp_path / "twice.pt"
  write_torch_zip(path, {"x": np.zeros(3, np.float32)})
  with zipfile.ZipFile(path, "a") as archive, pytest.warns(UserWarning):
    archive.writestr("archive/data/0", np.ones(3, np.float32).tobytes())
  with pytest.raises(CheckpointError, match="more than one member named archive/data/0"):
    read_checkpoint(path)
  encrypted = tmp_path / "encrypted.pt"
  payload = pickle.dumps({}, protocol=2)
  raw_zip(encrypted, [("archive/data.pkl", payload, zipfile.ZIP_STORED, len(payload), zlib.crc32(payload))])
  data = bytearray(encrypted.read_bytes())
  data[6] |= 1  # general purpose flag, local header
  data[data.index(b"PK\x01\x02") + 8] |= 1  # and central directory
  encrypted.write_bytes(bytes(data))
  with pytest.raises(CheckpointError, match="archive/data.pkl is encrypted"):
    read_checkpoint(encrypted)


# --- 2. non-finite weights -------------------------------------------------------------------------------


def test_nonfinite_weights_are_refused_by_name_and_allowed_by_flag(tmp_path, capsys):
  heads = _projections()
  heads["projection_base"]["1.bias"][3] = np.nan
  heads["projection_interpolation"]["0.weight"][0, 0] = np.inf
  src = tmp_path / "t5_projections.pt"
  write_torch_zip(src, heads)
  out = tmp_path / "out"
  argv = ["projections", str(src), str(out), "--config", "t5-projections-tiny"]
  _assert_refused(argv, capsys, str(src), "2 tensors with non-finite values", "projection_base.1.bias (NaN)",
                  "projection_interpolation.0.weight (Inf)", "--allow-nonfinite")
  code, captured = _run(argv + ["--allow-nonfinite"], capsys)
  assert code == 0
  warning = [l for l in captured.err.splitlines() if l.startswith("warning:")]
  assert len(warning) == 1 and "projection_base.1.bias (NaN)" in warning[0], captured.err
  params = load_converted(out).params
  assert np.isnan(params["projection_base_1"]["bias"][3])
  assert np.isinf(params["projection_interpolation_0"]["kernel"][0, 0])


def test_nonfinite_count_and_first_names(tmp_path, capsys):
  heads = _projections()
  for head in heads.values():
    for value in head.values():
      value.reshape(-1)[0] = -np.inf
  src = tmp_path / "t5_projections.pt"
  write_torch_zip(src, heads)
  _assert_refused(["projections", str(src), str(tmp_path / "out"), "--config", "t5-projections-tiny"], capsys,
                  "6 tensors with non-finite values", "and 1 more")


def test_nonfinite_null_embedding_and_unet_tensor(tmp_path, capsys):
  container = read_checkpoint(os.path.join(KEYFRAME_FIXTURE, "t2v.pt"))
  unet = {k: v.numpy() for k, v in flatten_state_dict(container["unet"]).items()}
  weight = unet["in_layer.weight"].copy()
  unet["in_layer.weight"][0, 0, 0, 0] = np.nan
  null = container["null_embedding"].numpy()
  src = tmp_path / "t2v.pt"
  write_torch_zip(src, {"unet": unet, "null_embedding": null})
  _assert_refused(["keyframe", str(src), str(tmp_path / "out"), "--config", "keyframe-tiny"], capsys,
                  f"{src} ['unet']: 1 tensor with non-finite values: in_layer.weight (NaN)")
  unet["in_layer.weight"], null[1] = weight, np.inf
  write_torch_zip(src, {"unet": unet, "null_embedding": null})
  _assert_refused(["keyframe", str(src), str(tmp_path / "out"), "--config", "keyframe-tiny"], capsys,
                  f"{src}: 1 tensor with non-finite values: null_embedding (Inf)")


def test_values_beyond_the_output_dtype_are_refused(tmp_path, capsys):
  heads = _projections()
  heads["projection_base"]["0.weight"][1, 2] = 1e6  # finite in fp32, Inf in fp16
  src = tmp_path / "t5_projections.pt"
  write_torch_zip(src, heads)
  argv = ["projections", str(src), str(tmp_path / "out"), "--config", "t5-projections-tiny"]
  assert _run(argv + ["--dtype", "bf16"], capsys)[0] == 0  # bf16 holds it
  _assert_refused([*argv[:2], str(tmp_path / "out16"), *argv[3:], "--dtype", "fp16"], capsys,
                  "projection_base.0.weight (values beyond the range of float16)")


# --- 3. integer-stored weights ---------------------------------------------------------------------------


def test_integer_stored_weight_is_refused_unless_allowed(tmp_path, capsys):
  heads = _projections()
  heads["projection_base"]["0.weight"] = np.arange(CFG.context_dim * CFG.in_dim, dtype=np.int64).reshape(
      CFG.context_dim, CFG.in_dim)
  src = tmp_path / "t5_projections.pt"
  write_torch_zip(src, heads)
  out = tmp_path / "out"
  argv = ["projections", str(src), str(out), "--config", "t5-projections-tiny"]
  _assert_refused(argv, capsys, f"{src}: projection_base.0.weight is stored as int64; the model's parameter is "
                  "floating point", "--allow-integer-weights")
  heads["projection_interpolation"]["1.bias"] = np.ones(CFG.context_dim, np.bool_)
  write_torch_zip(src, heads)
  _assert_refused(argv, capsys, "2 tensors are stored as integers", "projection_base.0.weight (int64)",
                  "projection_interpolation.1.bias (bool)")
  code, captured = _run(argv + ["--allow-integer-weights"], capsys)
  assert code == 0 and "warning:" in captured.err and "cast to floats" in captured.err
  params = load_converted(out).params
  kernel = params["projection_base_0"]["kernel"]
  assert kernel.dtype == np.float32 and np.array_equal(kernel.T.reshape(-1), np.arange(kernel.size))
  assert np.array_equal(params["projection_interpolation_1"]["bias"], np.ones(CFG.context_dim))


def test_float_storage_dtypes_are_still_accepted(tmp_path, capsys):
  for dtype in (np.float16, np.float64):
    src = tmp_path / f"{np.dtype(dtype).name}.pt"
    write_torch_zip(src, _projections(dtype))
    assert _run(["projections", str(src), str(tmp_path / np.dtype(dtype).name), "--config",
                 "t5-projections-tiny"], capsys)[0] == 0


# python -m convert, killed (SIGKILL: no handler runs) once the weights are in the staging folder and before
# its description is: the kill point is the call that describes the weights' dtype.
KILLED_CONVERT = """
import os, signal, sys
from kvjax.conversion import store
store._dtype_name = lambda tree: os.kill(os.getpid(), signal.SIGKILL)
from convert.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_conversion_leaves_a_staging_that_the_next_run_removes(tmp_path, capsys):
  import signal
  import subprocess
  import sys
  src, out = tmp_path / "t5_projections.pt", tmp_path / "out"
  write_torch_zip(src, _projections())
  argv = ["projections", str(src), str(out), "--config", "t5-projections-tiny"]
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  child = subprocess.run([sys.executable, "-c", KILLED_CONVERT, *argv], cwd=repo, capture_output=True, text=True,
                         timeout=300)
  assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
  left = sorted(os.listdir(tmp_path))
  assert len(left) == 2 and left[0].startswith(".out.partial-") and left[1] == src.name, left
  assert os.listdir(tmp_path / left[0]) == ["state"]  # killed with the weights written: no output yet
  code, captured = _run(argv, capsys)
  assert code == 0 and "removed 1 leftover staging of" in captured.err, captured.err
  assert sorted(os.listdir(tmp_path)) == ["out", src.name]
  np.testing.assert_array_equal(load_converted(out).params["projection_base_1"]["bias"],
                                _projections()["projection_base"]["1.bias"])


def test_every_converting_command_has_the_flags():
  parser = _parser()
  for command in ("keyframe", "interpolation", "movq", "video-movq", "t5", "projections", "all", "lpips"):
    args = parser.parse_args([command, "a", "b", "--allow-nonfinite", "--allow-integer-weights"])
    assert args.allow_nonfinite and args.allow_integer_weights


def test_release_with_a_nan_leaves_nothing(tmp_path, capsys, monkeypatch):
  # `all` stages the whole release; a refused model leaves no output folder (here a one-model release).
  from kvjax.conversion import release as release_module
  release = tmp_path / "release"
  release.mkdir()
  heads = _projections()
  heads["projection_base"]["1.weight"][0] = np.nan
  write_torch_zip(release / "t5_projections.pt", heads)
  (release / "model_configs.json").write_text(json.dumps({"text_encoder": {"context_dim": CFG.context_dim}}))
  monkeypatch.setattr(release_module, "release_sources",
                      lambda src_dir, t5_dir=None: {"projections": str(release / "t5_projections.pt")})
  _assert_refused(["all", str(release), str(tmp_path / "converted")], capsys, "projection_base.1.weight (NaN)")


# --- 4. further malformed inputs -------------------------------------------------------------------------


def _tensor_pickle(shape=(4,), stride=None, extra=b""):
  writer = _PickleWriter()
  writer.out.write(b"}(")
  writer.string("x")
  writer.tensor("0", np.dtype(np.float32), (4,))
  writer.out.write(extra)
  writer.out.write(b"u")
  data = writer.finish()
  if shape != (4,) or stride is not None:  # rewrite the size and stride tuples of the one tensor
    sizes = b"(J\x04\x00\x00\x00t(J\x01\x00\x00\x00t"
    assert sizes in data
    w = _PickleWriter()
    w.out = io.BytesIO()
    w.int_tuple(shape)
    w.int_tuple(stride if stride is not None else (1,) * len(shape))
    data = data.replace(sizes, w.out.getvalue())
  return data


@pytest.mark.parametrize("shape,stride,message", [
    ((-4,), (1,), "invalid tensor geometry"),
    ((2**40, 2**40), (0, 0), "absurd tensor size"),
    ((2**26,), (0,), "an expanded view"),
    ((4,) * 40, (0,) * 40, "at most 32 integers"),
])
def test_absurd_tensor_geometry_is_refused(tmp_path, shape, stride, message):
  path = tmp_path / "bad.pt"
  torch_zip_with_pickle(path, _tensor_pickle(shape, stride), [("0", np.zeros(4, np.float32).tobytes())])
  with pytest.raises(CheckpointError, match=message):
    read_checkpoint(path)


def test_attribute_setting_on_a_tensor_is_refused(tmp_path):
  # BUILD with {'span': 10**9} on the tensor would undo the checks the reader made of its geometry.
  w = _PickleWriter()
  w.out = io.BytesIO()
  w.out.write(b"}")
  w.string("span")
  w.integer(10**9)
  w.out.write(b"sb")
  path = tmp_path / "build.pt"
  torch_zip_with_pickle(path, _tensor_pickle(extra=w.out.getvalue()), [("0", np.zeros(4, np.float32).tobytes())])
  with pytest.raises(CheckpointError, match="refused to set the attributes of a LazyTensor"):
    read_checkpoint(path)


def test_pickle_structure_bombs_are_refused(tmp_path):
  shared = []
  for _ in range(40):
    shared = [shared, shared]  # 2**40 paths through 40 lists
  deep = []
  for _ in range(300):
    deep = [deep]
  cyclic = b"\x80\x02}q\x00(X\x01\x00\x00\x00ah\x00u."  # d = {}; d['a'] = d
  for name, payload, message in (("shared", pickle.dumps({"a": shared}, 2), "more than 1048576 objects"),
                                 ("deep", pickle.dumps({"a": deep}, 2), "nested more than 100 deep"),
                                 ("cyclic", cyclic, "holds itself")):
    path = tmp_path / f"{name}.pt"
    torch_zip_with_pickle(path, payload)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=message):
      read_checkpoint(path)
    # Refused without walking the structure: a walk would take hours (2**40 paths), so a generous bound
    # that a loaded CI machine never reaches.
    assert time.perf_counter() - start < 120, name


def test_memo_index_bomb_takes_no_memory(tmp_path):
  # A 9-byte pickle naming memo slot 2**27: the C unpickler fills a 2 GB memo array for it (2**32 - 1: 32 GB).
  path = tmp_path / "memo.pt"
  torch_zip_with_pickle(path, b"\x80\x02}r" + (2**27).to_bytes(4, "little") + b".")
  rss = _maxrss_mb()
  assert read_checkpoint(path) == {}
  assert _maxrss_mb() - rss < 100


def test_special_files_and_links(tmp_path, capsys):
  fifo = tmp_path / "fifo.pt"
  os.mkfifo(fifo)
  with pytest.raises(CheckpointError, match="not a regular file"):
    read_checkpoint(fifo)  # never opened: opening a FIFO would block
  device = tmp_path / "zero.pt"
  device.symlink_to("/dev/zero")
  with pytest.raises(CheckpointError, match="not a regular file"):
    read_checkpoint(device)
  dangling = tmp_path / "dangling.pt"
  dangling.symlink_to(tmp_path / "nowhere.pt")
  with pytest.raises(CheckpointError, match="dangling symbolic link"):
    read_checkpoint(dangling)
  real = tmp_path / "real.pt"
  write_torch_zip(real, {"x": np.arange(3, dtype=np.float32)})
  link = tmp_path / "link.pt"  # how the Hugging Face cache lays out snapshots: followed
  link.symlink_to(real)
  np.testing.assert_array_equal(read_checkpoint(link)["x"].numpy(), [0, 1, 2])
  _assert_refused(["projections", str(fifo), str(tmp_path / "out"), "--config", "t5-projections-tiny"], capsys,
                  str(fifo), "not a regular file")


def _safetensors(path, header: bytes, data: bytes = b"", length=None):
  path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)


@pytest.mark.parametrize("header,length,message", [
    (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', 2**62, "does not fit in the file"),
    (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
     b'"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', None, "names 'x' more than once"),
    (b'{"x": {"dtype": "F32", "shape": [-1, -1], "data_offsets": [0, 4]}}', None, "invalid shape"),
    (b'{"x": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}', None, "invalid shape"),
    (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}', None, "lies outside the file"),
    (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4000000]}}', None, "lies outside the file"),
    (b'{"x": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}', None, "dtype 'F8_E4M3'"),
    (b'{"x": ' + b"[" * 100000 + b"]" * 100000 + b"}", None, "corrupt safetensors header"),
])
def test_bad_safetensors_headers(tmp_path, header, length, message):
  path = tmp_path / "bad.safetensors"
  _safetensors(path, header, bytes(16), length)
  with pytest.raises(CheckpointError, match=message) as info:
    read_checkpoint(path)
  assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_file_cut_after_reading_names_the_tensor(tmp_path):
  path = tmp_path / "model.safetensors"
  header = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'
  _safetensors(path, header, bytes(16))
  tensor = read_checkpoint(path)["w"]
  path.write_bytes(path.read_bytes()[:-8])
  with pytest.raises(CheckpointError, match="cannot read tensor w"):
    tensor.numpy()


def test_a_container_of_the_wrong_structure_is_an_error_not_a_crash(tmp_path, capsys):
  src = tmp_path / "t5_projections.pt"
  torch_zip_with_pickle(src, pickle.dumps({"projection_base": [1], "projection_interpolation": [2]}, 2))
  (tmp_path / "model_configs.json").write_text(json.dumps({"text_encoder": {"context_dim": CFG.context_dim}}))
  _assert_refused(["projections", str(src), str(tmp_path / "out")], capsys, str(src),
                  "projection_base holds a list")
