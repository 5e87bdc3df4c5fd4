"""The app's HTTP server: the page, and a small JSON API over a JobQueue and a generator.

  GET  /                       the page (page.html)
  GET  /api/form               the generator's fields (the page builds its form from them)
  POST /api/jobs               {"prompts": [...], "options": {...}, "picture": {"name", "data": base64} | null}
                               -> 200 the job's status; 400 {"error"} for bad input; 503 {"error"} when busy
  GET  /api/jobs/{id}          the job's status: queue place and wait, stages, steps, outputs, settings
  GET  /api/jobs/{id}/{name}   one of the job's outputs

Bad input is answered with a message naming the option, never a traceback. Request bodies are bounded
(`max_body`) before they are parsed; an uploaded picture is written only into a private folder of the
queue's (mode 0700), read there by the project's bounded image reader (kvjax.pipeline.images.open_image:
size, pixels, modes) and removed at once. Jobs are reached only by their random id: nothing lists them.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) as objects.
import base64
import binascii
import json
import os
import re
import shutil
from importlib import resources
from typing import Any, Protocol, Sequence

from kvjax.app.jobs import Busy, JobQueue

MAX_PICTURE_BYTES = 20 * 2 ** 20  # an encoded picture; its pixels are bounded again by open_image
MAX_BODY = MAX_PICTURE_BYTES * 4 // 3 + 2 ** 16  # base64 of the picture, and the rest
MAX_PROMPTS = 4  # one batch: every prompt is one more video in the same run
MAX_PROMPT_CHARS = 2000
_PICTURE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class Generator(Protocol):
  """What the server runs: `form()` the fields of the page; `prepare(prompts, options, picture, name)` a
  checked request (ValueError with a message naming the option otherwise) with `.plan` (stage names),
  `.settings` (a dict shown on the page) and `.command` (the equivalent command line); `run(request, folder,
  progress, step_progress)` makes it, in the queue's worker thread, and returns the file names it wrote into
  `folder`."""

  def form(self) -> dict: ...

  def prepare(self, prompts: Sequence[str], options: dict[str, Any], picture, picture_name: str | None): ...

  def run(self, request, folder: str, progress, step_progress) -> list[str]: ...


class BadRequest(ValueError):
  pass


def picture_name(name: Any) -> str:
  """An uploaded picture's name as the settings and the command show it: its last path part, plain
  characters only (it names nothing on this machine)."""
  base = os.path.basename(str(name or "").replace("\\", "/"))
  return _PICTURE_NAME.sub("_", base)[:64].strip("._") or "picture.png"


def read_request(body: bytes) -> tuple[list[str], dict, bytes | None, str | None]:
  """(prompts, options, picture bytes, picture name) of a POST /api/jobs body; BadRequest names the problem."""
  try:
    data = json.loads(body)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise BadRequest(f"the request is not JSON ({e})") from None
  if not isinstance(data, dict):
    raise BadRequest("the request must be a JSON object with prompts, options and picture")
  prompts = data.get("prompts")
  if isinstance(prompts, str):
    prompts = [prompts]
  if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
    raise BadRequest("prompts must be a list of texts")
  prompts = [p.strip() for p in prompts if p.strip()]
  if not prompts:
    raise BadRequest("the prompt is empty; describe the video, e.g. \"a red circle moving right\"")
  if len(prompts) > MAX_PROMPTS:
    raise BadRequest(f"{len(prompts)} prompts: at most {MAX_PROMPTS} a request (one a line)")
  long = [i + 1 for i, p in enumerate(prompts) if len(p) > MAX_PROMPT_CHARS]
  if long:
    raise BadRequest(f"prompt {long[0]} is longer than {MAX_PROMPT_CHARS} characters")
  options = data.get("options") or {}
  if not isinstance(options, dict):
    raise BadRequest("options must be an object of option names and values")
  picture = data.get("picture")
  if picture is None:
    return prompts, options, None, None
  if not isinstance(picture, dict) or not isinstance(picture.get("data"), str):
    raise BadRequest("the picture must be an object with its name and its data (base64)")
  if len(picture["data"]) > MAX_PICTURE_BYTES * 4 // 3 + 4:
    raise BadRequest(f"the picture is larger than {MAX_PICTURE_BYTES // 2 ** 20} MB; scale it down first")
  try:
    raw = base64.b64decode(picture["data"], validate=True)
  except (binascii.Error, ValueError):
    raise BadRequest("the picture's data is not base64") from None
  return prompts, options, raw, picture_name(picture.get("name"))


def open_picture(queue: JobQueue, raw: bytes, name: str):
  """The uploaded picture, read by the bounded image reader from a private scratch folder removed at once."""
  from kvjax.pipeline.images import open_image
  scratch = queue.scratch()
  try:
    path = os.path.join(scratch, "picture")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
      f.write(raw)
    try:
      return open_image(path, "")
    except (ValueError, FileNotFoundError) as e:
      raise BadRequest(f"the picture {name}: {str(e).removeprefix(path).lstrip(': ')}") from None
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def job_status(queue: JobQueue, job_id: str) -> dict | None:
  status, job = queue.status(job_id), queue.job(job_id)
  if status is None or job is None:  # unknown, or forgotten in between
    return None
  status["settings"] = getattr(job.request, "settings", {})
  status["command"] = getattr(job.request, "command", "")
  status["urls"] = {name: f"/api/jobs/{job_id}/{name}" for name in status["outputs"]}
  return status


def request_host(host_header: str) -> str:
  """The host of a Host header, without its port: "127.0.0.1:7860" -> "127.0.0.1", "[::1]:7860" -> "::1"."""
  host = host_header.strip().lower()
  if host.startswith("["):
    return host[1:host.find("]")] if "]" in host else host
  return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def make_app(generator: Generator, queue: JobQueue, max_body: int = MAX_BODY, about: str = "",
             allowed_hosts: Sequence[str] | None = LOOPBACK_NAMES):
  """The FastAPI application of the page and its API. `about`: a line the page shows under its title (which
  weights, where it listens). `allowed_hosts`: the names the server may be asked for (the Host header), None
  for any: on a loopback address, another site's page cannot reach it through a name it resolves to
  127.0.0.1 (DNS rebinding)."""
  from fastapi import FastAPI, Request
  from fastapi.concurrency import run_in_threadpool
  from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

  app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)  # no API explorer pages
  page = resources.files("kvjax.app").joinpath("page.html").read_text()
  headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

  def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)

  if allowed_hosts is not None:
    allowed = {host.lower() for host in allowed_hosts}

    @app.middleware("http")
    async def only_allowed_hosts(request: Request, call_next):
      if request_host(request.headers.get("host", "")) not in allowed:
        return error(400, f"this server answers only to {', '.join(sorted(allowed))}")
      return await call_next(request)

  @app.get("/", response_class=HTMLResponse)
  def index():
    return HTMLResponse(page, headers={**headers, "X-Frame-Options": "DENY"})

  @app.get("/api/form")
  def form():
    return JSONResponse({**generator.form(), "about": about, "max_prompts": MAX_PROMPTS,
                         "max_picture_bytes": MAX_PICTURE_BYTES}, headers=headers)

  @app.post("/api/jobs")
  async def submit(request: Request):
    # JSON only: another site's page cannot send JSON here without the browser asking first (CORS), which
    # this server never allows.
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
      return error(415, "send the request as JSON (Content-Type: application/json)")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > max_body):
      return error(413, f"the request is larger than {max_body // 2 ** 20} MB (a picture may have at most "
                        f"{MAX_PICTURE_BYTES // 2 ** 20} MB)")
    body = bytearray()
    async for chunk in request.stream():
      body += chunk
      if len(body) > max_body:
        return error(413, f"the request is larger than {max_body // 2 ** 20} MB")

    def prepare():
      prompts, options, raw, name = read_request(bytes(body))
      picture = None if raw is None else open_picture(queue, raw, name)
      prepared = generator.prepare(prompts, options, picture, name)
      return queue.submit(prepared, prepared.plan)

    try:
      job = await run_in_threadpool(prepare)
    except Busy as e:
      return error(503, str(e))
    except ValueError as e:  # BadRequest, and the generator's checks of the options
      return error(400, str(e))
    return JSONResponse(job_status(queue, job.id), headers=headers)

  @app.get("/api/jobs/{job_id}")
  def status(job_id: str):
    found = job_status(queue, job_id)
    if found is None:
      return error(404, "no such video here (it may have been replaced by newer ones)")
    return JSONResponse(found, headers=headers)

  @app.get("/api/jobs/{job_id}/{name}")
  def output(job_id: str, name: str):
    path = queue.output(job_id, name)
    if path is None:
      return error(404, "no such file")
    kind = {".mp4": "video/mp4", ".gif": "image/gif"}.get(os.path.splitext(name)[1], "application/octet-stream")
    return FileResponse(path, media_type=kind, filename=name, content_disposition_type="inline", headers=headers)

  return app


def make_server(app, sock):
  """A uvicorn server of `app` on the listening socket `sock`: `.run(sockets=[sock])` serves until
  `.should_exit` is set (Ctrl-C, or a test)."""
  import uvicorn
  host, port = sock.getsockname()[:2]
  return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))


def serve(app, sock) -> None:
  """Serves `app` on the listening socket `sock` until interrupted."""
  make_server(app, sock).run(sockets=[sock])
