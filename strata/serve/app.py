"""The HTTP API of `strata serve`: JSON in, JSON out, one FastAPI app over the served runs.

Every request body is read here with its limits (413 before parsing, 415 for a body that is not JSON),
parsed into a strict model (unknown fields and wrong types are 400s naming the field), and its items
decoded into a folder the server owns (strata/serve/inputs.py). Torch work happens in each run's
worker thread (strata/serve/runs.py), predict through the dynamic batcher (strata/serve/batching.py).
Errors are `{"error": message, "field": where}`; a bug is a 500 with a short message, logged here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from asyncio import CancelledError
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from strata.errors import StrataError
from strata.serve.inputs import BadInput, Scratch
from strata.serve.runs import MAX_NEW_TOKENS, MAX_STEPS, ServedRun, unknown_run

log = logging.getLogger("strata.serve")
PAGE = Path(__file__).with_name("page.html")
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}  # Swagger UI's files


def swagger_ui_files() -> Path:
    """Swagger UI 5 (it reads OpenAPI 3.1, what FastAPI writes), as the swagger-ui-py package ships it."""
    from importlib.util import find_spec

    return Path(find_spec("swagger_ui").origin).parent / "static"
PLACEHOLDER = ("<!doctype html><meta charset=utf-8><title>strata serve</title><h1>strata serve</h1>"
               "<p>The JSON API is at <a href=/docs>/docs</a>; the runs it serves are listed at "
               "<a href=/info>/info</a>.")
MAX_EXPLAIN_STEPS = 256
INLINE_BYTES = 64 * 1024  # inputs up to this size are decoded on the event loop, larger ones in a thread
DRAIN_FACTOR = 4  # a too-large body is read (and dropped) up to this many times the limit, so the client sees the 413


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 10 * 2**20
    max_items: int = 64
    timeout_s: float = 30.0
    max_batch: int = 32
    batching: bool = True


# --- request bodies (strict: unknown fields and wrong types are refused) ------------------------------


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PredictBody(Body):
    inputs: list[Any] = Field(description="One item per example: an image as base64 PNG/JPEG bytes (or a data: URL), "
                                          "a sentence, a .wav as base64, a table row {column: value}, CSV text of a "
                                          "time series, or a nested list shaped like one example.")


class ExplainBody(PredictBody):
    target: int | str | None = Field(None, description="class name or score index to explain (default: the "
                                                        "predicted one)")
    method: str | None = Field(None, description="attribution method (default integrated_gradients)")
    steps: int | None = Field(None, description=f"integration steps, 1..{MAX_EXPLAIN_STEPS} (default 32)")


class GenerateBody(Body):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    prompt: str | None = None
    max_new_tokens: int | None = Field(None, description=f"at most {MAX_NEW_TOKENS}")
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    n: int | None = Field(None, description="samples to draw, at most the server's max_items")
    class_: int | str | None = Field(None, alias="class", description="class name or index (conditional image models)")
    steps: int | None = Field(None, description=f"diffusion sampling steps, at most {MAX_STEPS}")
    guidance: float | None = None


class RecommendBody(Body):
    user: str | int
    item: str | int | None = None
    top: int | None = Field(None, description="how many items to list (1..1000)")


def schema(model: type[BaseModel]) -> dict:
    """The requestBody of the OpenAPI page for a handler that reads its body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _field(loc: tuple) -> str:
    """pydantic's error location -> `inputs[2]`; the tags of union members (`user.str`) are left out."""
    out = str(loc[0]) if loc else "body"
    for part in loc[1:]:
        if not isinstance(part, int):
            break
        out += f"[{part}]"
    return out


def parse(model: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise BadInput(f"body: expected a JSON object, got {type(data).__name__}", "body")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = _field(tuple(err["loc"]))
        # a union (str | int) fails once per member: say every way it could have been right
        msg = " or ".join(dict.fromkeys(x["msg"] for x in e.errors() if _field(tuple(x["loc"])) == where))
        if err["type"] == "extra_forbidden":
            fields = ", ".join(f.alias or n for n, f in model.model_fields.items())
            msg = f"unknown field; this endpoint takes {fields}"
        elif err["type"] == "missing":
            msg = "missing; it is required"
        raise BadInput(f"{where}: {msg}", where) from None


# --- answers ------------------------------------------------------------------------------------------


class Answer(JSONResponse):
    """JSON as `strata predict --json` writes it (anything else as its text), in strict JSON (no NaN)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=str, allow_nan=False, ensure_ascii=False, separators=(",", ":")).encode()


def error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


async def answer(work: Callable[[], Awaitable[Any]]) -> Any:
    """Run a handler's work, turning what it raises into the API's error answers. A dict is sent as
    JSON directly (FastAPI's encoder would walk it again)."""
    try:
        result = await work()
        return Answer(result) if isinstance(result, dict) else result
    except BadInput as e:
        return error(e.status, e.message, e.field)
    except StrataError as e:
        return error(400, str(e))
    except asyncio.TimeoutError:
        return error(504, "the request took longer than the server's timeout; send fewer inputs or ask for less")
    except Exception:  # a bug: logged here, a short message there
        log.exception("internal error while answering a request")
        return error(500, "internal error: a bug in strata, not in your request (logged on the server)")


async def read_json(request: Request, limits: Limits) -> Any:
    """The body as JSON: 413 when too large (by Content-Length, then as it streams), 415 when not JSON."""
    too_large = BadInput(f"body: larger than this server's limit of {limits.max_body_bytes:,} bytes; send fewer "
                         f"or smaller inputs", "body", 413)
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limits.max_body_bytes:
        await _drain(request, limits.max_body_bytes * DRAIN_FACTOR)
        raise too_large
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise BadInput(f"content type {kind or '(none)'!r}: send JSON with Content-Type: application/json "
                       "(files as base64 strings)", "content-type", 415)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise too_large
        chunks.append(chunk)
    request.state.body_bytes = size
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as e:
        raise BadInput(f"body: not valid JSON ({str(e)[:120]})", "body") from None


async def _drain(request: Request, most: int) -> None:
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > most:
                return
    except Exception:  # noqa: BLE001 - the client went away; the 413 is all that is left to send
        return


class Runs:
    """The served runs by name, and the limits every request is held to."""

    def __init__(self, runs: list[ServedRun], limits: Limits):
        self.by_name = {r.name: r for r in runs}
        self.limits = limits
        self.scratch = Scratch()

    def get(self, name: str | None) -> ServedRun:
        if name is None:
            if len(self.by_name) == 1:
                return next(iter(self.by_name.values()))
            raise BadInput(f"this server serves {len(self.by_name)} runs ({', '.join(self.by_name)}); name one: "
                           f"/runs/NAME/...", "name")
        if name not in self.by_name:
            raise BadInput(str(unknown_run(name, list(self.by_name))), "name", 404)
        return self.by_name[name]

    def need(self, run: ServedRun, action: str) -> None:
        if action not in run.actions:
            raise BadInput(f"run '{run.name}' ({run.run.cfg.task.name}) cannot {action}; it can: "
                           f"{', '.join(run.actions) or 'nothing over this API'}", "name")

    def check_items(self, items: list) -> None:
        if not items:
            raise BadInput("inputs: empty; send at least one input", "inputs")
        if len(items) > self.limits.max_items:
            raise BadInput(f"inputs: {len(items)} items; at most {self.limits.max_items} per request "
                           "(split them over several requests)", "inputs")

    async def run_in_worker(self, run: ServedRun, fn: Callable[[], Any],
                            after: Callable[[], None] | None = None) -> Any:
        """fn() in the run's worker thread, awaited up to the timeout; `after()` once it has finished,
        even when the client stopped waiting (the work cannot be interrupted; its files must outlive it)."""
        work = asyncio.get_running_loop().run_in_executor(run.executor, fn)

        def finished(f: asyncio.Future) -> None:
            if not f.cancelled():
                f.exception()  # retrieved, so a failure nobody waits for is not reported as unhandled
            if after is not None:
                after()

        work.add_done_callback(finished)
        return await asyncio.wait_for(asyncio.shield(work), self.limits.timeout_s)


async def predict(runs: Runs, run: ServedRun, request: Request) -> dict:
    runs.need(run, "predict")
    body = parse(PredictBody, await read_json(request, runs.limits))
    runs.check_items(body.inputs)
    files = runs.scratch.files()
    job = None
    try:
        if request.state.body_bytes <= INLINE_BYTES:
            inputs = run.prepare(body.inputs, files)  # a small image decodes faster than a thread hop
        else:
            inputs = await asyncio.to_thread(run.prepare, body.inputs, files)
        job = run.batcher.submit(inputs)
        return {"predictions": await asyncio.wait_for(asyncio.shield(job.future), runs.limits.timeout_s)}
    except StrataError as e:
        raise StrataError(files.redact(str(e))) from None
    finally:
        if job is None or job.future.done():
            files.remove()
        else:  # still queued or running: the batcher skips it if it can; the files go when it is done
            job.abandoned = True
            job.future.add_done_callback(lambda f: (f.cancelled() or f.exception(), files.remove()))


async def explain(runs: Runs, run: ServedRun, request: Request) -> dict:
    runs.need(run, "explain")
    body = parse(ExplainBody, await read_json(request, runs.limits))
    runs.check_items(body.inputs)
    if body.steps is not None and not 1 <= body.steps <= MAX_EXPLAIN_STEPS:
        raise BadInput(f"steps: must be from 1 to {MAX_EXPLAIN_STEPS}, got {body.steps}", "steps")
    files = runs.scratch.files()
    try:
        inputs = await asyncio.to_thread(run.prepare, body.inputs, files)
    except BaseException:
        files.remove()
        raise
    try:
        out = await runs.run_in_worker(run, lambda: run.explain(inputs, body.target, body.method, body.steps),
                                       after=files.remove)
    except StrataError as e:
        raise StrataError(files.redact(str(e))) from None
    for i, r in enumerate(out["explanations"]):
        if i < len(body.inputs):
            r["input"] = f"inputs[{i}]"
    return out


def generate_request(runs: Runs, body: GenerateBody) -> dict:
    """The options given, bounded by the server's caps (a 400 names the cap)."""
    caps = {"n": runs.limits.max_items, "max_new_tokens": MAX_NEW_TOKENS, "steps": MAX_STEPS}
    request = body.model_dump(exclude_none=True, by_alias=True)
    for key, cap in caps.items():
        if key in request and request[key] > cap:
            raise BadInput(f"{key}: {request[key]} is more than this server gives one request ({cap})", key)
    if "class" in request:
        request["class_"] = request.pop("class")
    return request


async def generate(runs: Runs, run: ServedRun, request: Request) -> dict:
    runs.need(run, "generate")
    options = generate_request(runs, parse(GenerateBody, await read_json(request, runs.limits)))
    return await runs.run_in_worker(run, lambda: run.generate(options))


class Stopped(Exception):
    """Raised inside the generation loop when its client has gone or its time is up."""


async def generate_stream(runs: Runs, run: ServedRun, request: Request) -> StreamingResponse:
    runs.need(run, "stream")
    options = generate_request(runs, parse(GenerateBody, await read_json(request, runs.limits)))
    if options.get("n", 1) != 1:
        raise BadInput("n: a stream carries one text; leave n out (or use /generate for several)", "n")
    from strata.tasks.language_model import check_request

    check_request(options, run.run.task.cfg)  # a bad option is a 400 now, not an event later
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def on_text(piece: str) -> None:
        if stop.is_set():
            raise Stopped()
        loop.call_soon_threadsafe(queue.put_nowait, ("text", piece))

    work = loop.run_in_executor(run.executor, lambda: run.generate(options, on_text=on_text))

    def finished(f: asyncio.Future) -> None:
        if not f.cancelled():
            f.exception()  # retrieved: a stream its client left ends in Stopped, which nobody reads
        queue.put_nowait(("end", f))

    work.add_done_callback(finished)

    async def events():
        deadline = loop.time() + runs.limits.timeout_s
        try:
            while True:
                try:
                    kind, value = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    yield _event({"error": f"timed out after {runs.limits.timeout_s:g} s; ask for fewer tokens",
                                  "done": True})
                    return
                if kind == "text":
                    yield _event({"text": value})
                    continue
                failure = CancelledError("the server is stopping") if value.cancelled() else value.exception()
                if failure is None:
                    result = value.result()
                    yield _event({"done": True, "seed": result.get("seed")})
                elif isinstance(failure, StrataError):
                    yield _event({"error": str(failure), "done": True})
                else:
                    log.error("internal error while streaming", exc_info=failure)
                    yield _event({"error": "internal error: a bug in strata (logged on the server)", "done": True})
                return
        finally:
            stop.set()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _event(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def recommend(runs: Runs, run: ServedRun, request: Request) -> dict:
    runs.need(run, "recommend")
    body = parse(RecommendBody, await read_json(request, runs.limits))
    if body.top is not None and not 1 <= body.top <= 1000:
        raise BadInput(f"top: must be from 1 to 1000, got {body.top}", "top")
    req: dict[str, Any] = {"user": str(body.user)}
    if body.item is not None:
        req["item"] = str(body.item)
    if body.top is not None:
        req["top"] = body.top
    return await runs.run_in_worker(run, lambda: run.recommend(req))


# --- the app ------------------------------------------------------------------------------------------

DESCRIPTION = """Trained strata runs over HTTP. Every POST takes and returns JSON (`Content-Type: application/json`;
files as base64 strings or `data:` URLs). Errors are `{"error": message, "field": where}`: 400 malformed input
(the field is named), 404 unknown run or route, 413 body too large, 415 not JSON, 504 timeout, 500 a bug.
With exactly one run, `/predict`, `/explain`, `/generate` and `/generate/stream` work without `/runs/{name}`."""

ROUTES: dict[str, tuple[Callable, type[BaseModel], str]] = {
    "predict": (predict, PredictBody, "Predict: `{\"inputs\": [item, ...]}` -> `{\"predictions\": [...]}`, one dict "
                                      "per input, as `strata predict --json` prints. Concurrent requests are batched."),
    "explain": (explain, ExplainBody, "Explain: `{\"inputs\": [item], \"target\"?, \"method\"?}` -> "
                                      "`{\"explanations\": [...], \"heatmap\": data URL of a PNG (image runs)}`."),
    "generate": (generate, GenerateBody, "Generate: a language model's `{\"text\", \"seed\", ...}`; an image "
                                         "generator's `{\"images\": [data URLs], \"grid\": data URL, ...}`."),
    "generate/stream": (generate_stream, GenerateBody, "Language models: `text/event-stream` of `data: {\"text\": "
                                                       "piece}` events, then `data: {\"done\": true, \"seed\": s}`."),
    "recommend": (recommend, RecommendBody, "Rating and ranking runs: `{\"user\", \"item\"?, \"top\"?}` -> one "
                                            "item's score or the user's best unrated items."),
}


def build_app(runs: Runs) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for run in runs.by_name.values():
            run.batcher.start()
        yield
        for run in runs.by_name.values():
            await run.batcher.stop()
            run.executor.shutdown(wait=False, cancel_futures=True)
        runs.scratch.remove()

    # /docs from files on this machine: FastAPI's default page loads Swagger UI from a CDN, which an
    # offline machine (or a careful one) never reaches
    app = FastAPI(title="strata serve", description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runs = runs

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="strata serve: the API",
                                   swagger_js_url="/docs/swagger-ui-bundle.js", swagger_css_url="/docs/swagger-ui.css",
                                   swagger_favicon_url="data:,")

    @app.get("/docs/{asset}", include_in_schema=False)
    async def docs_asset(asset: str):
        if asset not in DOCS_ASSETS:  # two fixed files: a request never names a path
            return error(404, f"no route GET /docs/{asset}; see /docs", "path")
        return FileResponse(swagger_ui_files() / asset, media_type=DOCS_ASSETS[asset])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return error(404, f"no route {request.method} {request.url.path}; see /docs for the API", "path")
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = _field(tuple(err["loc"]))
        return error(400, f"{where}: {err['msg']}", where)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8") if PAGE.is_file() else PLACEHOLDER)

    @app.get("/health", summary="Liveness: `{\"status\": \"ok\", \"runs\": N}`")
    async def health():
        return {"status": "ok", "runs": len(runs.by_name)}

    @app.get("/info", summary="The served runs (inputs, actions, classes, columns, generation; `served`: predict "
                              "requests, forward passes and inputs so far) and the limits")
    async def info():
        lim = runs.limits
        return {"runs": [r.describe() for r in runs.by_name.values()],
                "limits": {"max_body_bytes": lim.max_body_bytes, "max_items": lim.max_items,
                           "timeout_s": lim.timeout_s, "max_batch": lim.max_batch, "batching": lim.batching}}

    for action, (handler, model, summary) in ROUTES.items():
        named, single = endpoints(runs, handler)
        app.post(f"/runs/{{name}}/{action}", summary=summary, openapi_extra=schema(model), name=action)(named)
        app.post(f"/{action}", summary=summary + " (the only run)", openapi_extra=schema(model),
                 name=f"{action} (one run)")(single)
    return app


def endpoints(runs: Runs, handler: Callable) -> tuple[Callable, Callable]:
    """The two routes of an action: /runs/{name}/ACTION and, for a server of one run, /ACTION."""

    async def named(request: Request, name: str):
        return await answer(lambda: handler(runs, runs.get(name), request))

    async def single(request: Request):
        return await answer(lambda: handler(runs, runs.get(None), request))

    return named, single
