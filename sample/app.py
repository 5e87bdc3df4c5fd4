"""Serves a web page for making videos: prompts, an optional first-frame picture and the sample program's
options in, a playable mp4 (and the gif) out, with progress while it works and the equivalent
`python -m sample` command. One pipeline, loaded and compiled once per shape, serves every visitor; requests
wait their turn in a bounded queue.

  python -m sample.app                                  # the embedded demo, http://127.0.0.1:7860
  python -m sample.app --weights converted --port 8080 --bf16

It listens on 127.0.0.1 (this machine only) unless --host says otherwise: --host 0.0.0.0 serves every network
this machine is on, to anyone who reaches it (the page has no login). Needs the app extra:
pip install 'kvjax[app]' (FastAPI and uvicorn).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import shlex
import socket
import sys
from typing import Any, Sequence

from kvjax.cli import program_name

from .__main__ import (OPTION_FIELDS, _check_prompts, _outputs, add_generation_options,
                       add_model_options, check_model_options, generation_options, load_pipeline, read_loras,
                       weights_and_defaults)

LOOPBACK = "127.0.0.1"
# The page's first fields; every other generation option of the sample program (add_generation_options)
# goes under its "advanced" fold by itself, so a new option there needs no line here.
MAIN_FIELDS = ("fps", "motion", "seed", "steps", "sampler", "key_frame_guidance", "text_guidance",
               "image_guidance", "interpolation_guidance")
LABELS = {"fps": "Frames", "key_frame_guidance": "Key frame guidance", "text_guidance": "Text guidance",
          "image_guidance": "Image guidance", "interpolation_guidance": "Interpolation guidance",
          "steps": "Steps per stage", "noise_augmentation": "Noise augmentation", "keep_image": "Keep the picture"}


def _parser() -> argparse.ArgumentParser:
  script = os.path.basename(sys.argv[0]) if sys.argv else ""
  p = argparse.ArgumentParser(prog="kvjax-app" if script == "kvjax-app" else program_name("sample.app", __package__),
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_model_options(p)
  p.add_argument("--host", default=LOOPBACK, help=f"the address to listen on (default {LOOPBACK}: this machine "
                 "only); 0.0.0.0 serves every network this machine is on, to anyone (no login)")
  p.add_argument("--port", type=int, default=7860, help="the port to listen on (default 7860)")
  p.add_argument("--queue", type=int, default=4, help="videos that may wait while one is made (default 4); "
                 "more are refused with a 'busy' message")
  return p


class _Refusing(argparse.ArgumentParser):
  """A parser whose errors are ValueErrors (the page shows them) instead of a usage message and an exit."""

  def error(self, message):
    raise ValueError(message)


def request_parser() -> argparse.ArgumentParser:
  """The sample program's prompts and generation options, as the page's requests are read."""
  p = _Refusing(prog="the page", add_help=False)
  p.add_argument("prompts", nargs="+")
  add_generation_options(p)
  return p


@dataclasses.dataclass(frozen=True)
class Request:
  prompts: tuple[str, ...]
  options: Any  # GenerationOptions
  picture: Any  # a PIL image read by kvjax.pipeline.images.open_image, or None
  plan: tuple[str, ...]  # the stages it runs, as the pipeline's progress names them
  settings: dict
  command: str


def plan(options, picture: bool) -> tuple[str, ...]:
  """The stages a request runs, as the pipeline names them in its progress reports (the page lists them)."""
  from kvjax.pipeline.pipeline_config import FPS_PASSES
  from kvjax.pipeline.stages import BASE_FRAMES, DECODE, ENCODE, INTERPOLATION, KEY_FRAME, TEXT
  from kvjax.pipeline.text_to_video import window_stage
  passes = [f"{INTERPOLATION.name} {i + 1}" for i in range(len(FPS_PASSES[options.fps]))]
  windows = [window_stage(name, k, options.windows) for k in range(options.windows)
             for name in (BASE_FRAMES.name, *passes, DECODE.name)]
  return (TEXT.name, *(() if picture else (KEY_FRAME.name,)), ENCODE.name, *windows)


class Studio:
  """The generator of the app's server (kvjax.app.server.Generator) over one pipeline: requests read by the
  sample program's parser and checks, videos written by its writers."""

  def __init__(self, pipeline, defaults: dict, model_argv: Sequence[str] = (), weights: str = ""):
    self.pipeline, self.defaults, self.model_argv, self.weights = pipeline, defaults, list(model_argv), weights
    self.parser = request_parser()
    self.actions = {a.dest: a for a in self.parser._actions if a.dest in OPTION_FIELDS}
    self._reports = None  # (progress, step_progress) of the running job
    # One callback for every job: the stages are compiled with it, and another function would compile them anew.
    self._on_step = self._step

  def _step(self, stage, done, total):
    if self._reports is not None:
      self._reports[1](stage, done, total)

  def _progress(self, stage, seconds):
    if self._reports is not None:
      self._reports[0](stage, seconds)

  @staticmethod
  def _count(dest: str, action) -> int:
    """How many values the page gives option `dest`: one per field it sets (--steps, --cache-interval: three)."""
    field = OPTION_FIELDS[dest]
    return len(field) if isinstance(field, tuple) else action.nargs if isinstance(action.nargs, int) else 1

  @staticmethod
  def _value(options, dest: str):
    """The value of generation option `dest` in GenerationOptions `options` (a list for --steps)."""
    field = OPTION_FIELDS[dest]
    return [getattr(options, f) for f in field] if isinstance(field, tuple) else getattr(options, field)

  # --- the page's form --------------------------------------------------------------------------------

  def form(self) -> dict:
    effective = generation_options(self.parser.parse_args(["x"]), self.defaults)
    fields = []
    for dest, action in self.actions.items():
      kind = ("bool" if isinstance(action, argparse.BooleanOptionalAction) else "choice" if action.choices else
              "int" if action.type is int else "float")
      fields.append({"dest": dest, "flag": action.option_strings[0],
                     "label": LABELS.get(dest, dest.replace("_", " ").capitalize()), "kind": kind,
                     "choices": list(action.choices or []), "default": self._value(effective, dest),
                     "count": self._count(dest, action),
                     "names": list(action.metavar) if isinstance(action.metavar, tuple) else
                              ["key", "base", "interp"] if self._count(dest, action) == 3 else None,
                     "help": action.help or "", "advanced": dest not in MAIN_FIELDS})
    fields.sort(key=lambda f: (f["advanced"], MAIN_FIELDS.index(f["dest"]) if f["dest"] in MAIN_FIELDS else 0))
    from kvjax import demo
    example = "a red circle moving right" if self.weights == demo.DEMO_WEIGHTS else ""
    return {"fields": fields, "example": example}

  # --- a request --------------------------------------------------------------------------------------

  def _argv(self, options: dict[str, Any]) -> list[str]:
    """The page's option values as the sample program's command-line flags."""
    argv = []
    for dest, value in options.items():
      action = self.actions.get(dest)
      if action is None:
        raise ValueError(f"unknown option {dest!r}; the options are {', '.join(self.actions)}")
      flag = action.option_strings[0]
      if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
          raise ValueError(f"{flag} is yes or no, got {value!r}")
        argv.append(flag if value else f"--no-{flag[2:]}")
        continue
      count = self._count(dest, action)
      values = value if isinstance(value, list) else [value]
      if len(values) != count or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{flag} takes {count} value{'s' if count > 1 else ''}, got {value!r}")
      if any(not str(v).strip() for v in values):
        raise ValueError(f"{flag}: give all {count} values (or none, for the defaults)")
      argv += [flag, *(str(v).strip() for v in values)]
    return argv

  def _flags(self, options) -> list[str]:
    """Every generation option's value as flags, in the parser's order: the command repeats the video even
    where the defaults change."""
    argv = []
    for dest, action in self.actions.items():
      value, flag = self._value(options, dest), action.option_strings[0]
      if isinstance(action, argparse.BooleanOptionalAction):
        argv.append(flag if value else f"--no-{flag[2:]}")
      else:
        argv += [flag, *map(str, value if isinstance(value, list) else [value])]
    return argv

  def prepare(self, prompts: Sequence[str], options: dict[str, Any], picture=None,
              picture_name: str | None = None) -> Request:
    args = self.parser.parse_args([*self._argv(options), "--", *prompts])
    _check_prompts(args.prompts)
    chosen = generation_options(args, self.defaults)
    chosen.check_size(self.pipeline.config)
    flags = self._flags(chosen)
    image = [] if picture is None else ["--image", picture_name or "picture.png"]
    out = ["--out", "video.mp4"]
    if any(p.startswith("-") for p in args.prompts):  # a prompt that reads as an option comes after "--"
      words = [*out, *image, *self.model_argv, *flags, "--", *args.prompts]
    else:
      words = [*args.prompts, *out, *image, *self.model_argv, *flags]
    from kvjax import demo
    settings = {"prompts": list(args.prompts), "picture": picture_name if picture is not None else "none",
                "weights": "the embedded demo" if self.weights == demo.DEMO_WEIGHTS else self.weights}
    for dest, action in self.actions.items():  # each option as its flag names it, "--steps": "50 50 10"
      value = self._value(chosen, dest)
      settings[action.option_strings[0]] = (("yes" if value else "no") if isinstance(value, bool) else
                                            " ".join(map(str, value)) if isinstance(value, list) else str(value))
    cut = [self.pipeline.tokenizer.cut_tokens(p) for p in args.prompts]
    if any(cut):
      settings["note"] = (f"prompts are read up to {self.pipeline.tokenizer.max_length} tokens: "
                          + ", ".join(f"prompt {i + 1} loses its last {n}" for i, n in enumerate(cut) if n))
    return Request(tuple(args.prompts), chosen, picture, plan(chosen, picture is not None), settings,
                   shlex.join(["python", "-m", "sample", *words]))

  def run(self, request: Request, folder: str, progress, step_progress) -> list[str]:
    from kvjax.app.jobs import JobError
    from .writers import write_videos
    n = len(request.prompts)
    images = None if request.picture is None else [request.picture] * n
    self._reports = (progress, step_progress)
    try:
      videos = self.pipeline(list(request.prompts), request.options, images, progress=self._progress,
                             step_progress=self._on_step)
    except ValueError as e:
      raise JobError(str(e)) from None
    finally:
      self._reports = None
    mp4s, gifs = (_outputs(os.path.join(folder, f"video.{kind}"), n) for kind in ("mp4", "gif"))
    write_videos([*videos, *videos], [*mp4s, *gifs], seconds=request.options.seconds)
    return [os.path.basename(path) for pair in zip(mp4s, gifs) for path in pair]


def model_argv(args) -> list[str]:
  """The model options the app was started with, as `python -m sample` takes them."""
  argv = []
  for flag in ("weights", "image_movq", "video_movq", "tokenizer", "mesh"):
    if getattr(args, flag) is not None:
      argv += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
  argv += [f"--{flag.replace('_', '-')}" for flag in ("bf16", "offload", "no_compile_cache") if getattr(args, flag)]
  return argv + (["--attention", args.attention] if args.attention != "xla" else [])


def is_loopback(host: str) -> bool:
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return host == "localhost"


def listen(host: str, port: int) -> socket.socket:
  """A listening socket on host:port, bound before any weights load so that a taken port fails at once."""
  if not 0 <= port < 2 ** 16:
    raise ValueError(f"--port {port}: a port is in [0, 65535]")
  try:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
  except (OSError, UnicodeError) as e:
    raise ValueError(f"--host {host}: not an address of this machine ({e})") from None
  try:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(64)
  except OSError as e:
    sock.close()
    raise ValueError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
  return sock


def check_installed() -> None:
  missing = []
  for module in ("fastapi", "uvicorn"):
    try:
      __import__(module)
    except ImportError:
      missing.append(module)
  if missing:
    raise ValueError(f"the app needs {' and '.join(missing)}: pip install 'kvjax[app]' (or, from a checkout, "
                     "pip install -e '.[app]')")


def build(args, sock: socket.socket | None = None):
  """(FastAPI app, job queue) of the parsed options: the pipeline loaded, nothing served yet."""
  from kvjax.app.jobs import JobQueue
  from kvjax.app.server import LOOPBACK_NAMES, make_app
  weights_dir, defaults = weights_and_defaults(args.weights)
  mesh, overrides = check_model_options(args, weights_dir)
  pipeline = load_pipeline(args, weights_dir, defaults, mesh, overrides, loras=read_loras(args))
  from kvjax import demo
  label = ("the embedded demo (moving shapes)" if weights_dir == demo.DEMO_WEIGHTS else
           "random weights (the tiny preset: the videos are noise)" if weights_dir == "random" else weights_dir)
  studio = Studio(pipeline, defaults, model_argv(args), weights_dir)
  queue = JobQueue(lambda job, progress, steps: studio.run(job.request, job.folder, progress, steps),
                   max_waiting=args.queue)
  host = sock.getsockname()[0] if sock is not None else args.host
  where = "this machine only" if is_loopback(host) else "other machines too (no login)"
  return make_app(studio, queue, about=f"Weights: {label}. Served to {where}.",
                  allowed_hosts=LOOPBACK_NAMES if is_loopback(host) else None), queue


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    if args.queue < 0:
      raise ValueError(f"--queue {args.queue}: the number of videos that may wait is 0 or more")
    check_installed()
    sock = listen(args.host, args.port)
    app, queue = build(args, sock)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  from kvjax.app.server import serve
  host, port = sock.getsockname()[:2]
  url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
  if is_loopback(host):
    print(f"serving {url} to this machine only (--host 0.0.0.0 serves other machines too)", file=sys.stderr)
  else:
    print(f"serving {url} to OTHER MACHINES too: anyone who reaches this address can use it (the page has no "
          f"login); the default, --host {LOOPBACK}, serves this machine only", file=sys.stderr)
  from kvjax.atomic import sigterm_unwinds
  try:
    with sigterm_unwinds():  # a `kill` unwinds too, so the private folder is removed
      serve(app, sock)
  except KeyboardInterrupt:  # Ctrl-C: uvicorn stops serving, then raises it again
    pass
  finally:
    queue.close(timeout=5)
    print("stopped; its files are removed", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
