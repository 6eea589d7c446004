"""The dashboard as a Starlette app: the page, its parts, uploads and static files, behind the gate.

`create_app` builds it around a `Catalog` (the runs, or one outside model). Every handler
reads its parameters with `Query` (a bad one is a 400 with one line), asks the `Jobs` pool
for the computation (cached, shared, superseded), and renders a Jinja2 template. Errors
become one line: 400 for bad input, 404 for a run that is not there or not allowed, 413 for
an oversized upload, 204 for a request replaced by a newer one from the same control.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import logging
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from torch import Tensor

from mindscope.serve.catalog import Catalog, Entry, NotFound
from mindscope.serve.jobs import Jobs, Superseded
from mindscope.serve.params import BadRequest, ImageRef, Query
from mindscope.serve.pictures import image_src
from mindscope.serve.security import Gate, new_token
from mindscope.serve.uploads import TooLarge, Uploads
from mindscope.subject import Subject

log = logging.getLogger("mindscope.serve")

VIEWS = (
    ("runs", "Runs"),
    ("training", "Training"),
    ("weights", "Weights"),
    ("images", "Images"),
    ("activations", "Activations"),
    ("attributions", "Attributions"),
    ("trust", "Trust"),
    ("compare", "Runs side by side"),
)
HTMX_CONFIG = (
    '{"responseHandling": [{"code": "204", "swap": false}, {"code": "[23]..", "swap": true},'
    ' {"code": "[45]..", "swap": true, "error": true, "target": "#error", "swapOverride": "innerHTML"}],'
    ' "allowEval": false, "includeIndicatorStyles": false, "historyCacheSize": 0}'
)
Handler = Callable[[Request], Awaitable[Response]]
FRAGMENTS = 256  # rendered parts kept (a figure's HTML is about 50-300 KB)


@dataclass
class State:
    """What every view works on: a run at an epoch, and a chosen image."""

    run: str
    entry: Entry
    epoch: int | None
    image: ImageRef | None
    pixels: Tensor | None  # (1, C, H, W) in [0, 1]

    @property
    def caption(self) -> str:
        if self.image is None:
            return "no image"
        if self.image.index is None:
            return self.image.label
        test = self.entry.subject.data.test
        return f"{self.image.label} (labelled {test.classes[int(test.labels[self.image.index])]})"

    def require_image(self) -> Tensor:
        if self.pixels is None:
            raise BadRequest("this view needs an image: pick one in the Images view or upload a PNG/JPEG")
        return self.pixels

    def link(self, view: str, **extra: object) -> str:
        """The page address of `view` with this state (and `extra` parameters)."""
        params = {"view": view, "run": self.run}
        if self.epoch is not None:
            params["epoch"] = self.epoch
        if self.image is not None:
            params["image"] = self.image.key
        params.update({k: v for k, v in extra.items() if v is not None})
        return "/?" + urlencode(params)


class Dashboard:
    """The app's state: what may be opened, the worker pool, uploads, templates and the token."""

    def __init__(self, catalog: Catalog, *, workers: int, token: str, uploads: Uploads) -> None:
        self.catalog, self.token, self.uploads = catalog, token, uploads
        self.jobs = Jobs(workers=workers)
        self._fragments: OrderedDict[Hashable, bytes] = OrderedDict()
        self._pixels: OrderedDict[tuple[str, int], Tensor] = OrderedDict()
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("mindscope.serve", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.globals.update(pct=lambda v: "-" if v is None else f"{100 * v:.1f}%", htmx_config=HTMX_CONFIG)

    def render(self, template: str, *, memo: Hashable | None = None, **context: object) -> HTMLResponse:
        """Render a template; with `memo`, keep the HTML under that key (everything it shows depends on it)."""
        body = self.templates.get_template(template).render(**context).encode()
        if memo is not None:
            self._fragments[memo] = body
            while len(self._fragments) > FRAGMENTS:
                self._fragments.popitem(last=False)
        return HTMLResponse(body)

    def thumbnail(self, state: State) -> str:
        """The chosen image, twice its size, as a data URI for the page's header (kept once made)."""
        key = ("thumbnail", state.run, state.image.key)
        if key not in self._fragments:
            self._fragments[key] = image_src(state.pixels[0], scale=2).encode()
        return self._fragments[key].decode()

    def rendered(self, memo: Hashable) -> HTMLResponse | None:
        """The HTML kept under `memo`, if any: a cached view costs a dictionary look-up."""
        body = self._fragments.get(memo)
        if body is None:
            return None
        self._fragments.move_to_end(memo)
        return HTMLResponse(body)

    async def entry(self, run: str) -> Entry:
        """The opened run; opening (reading the data, building the model) runs in the pool."""
        self.catalog.resolve(run)  # NotFound before any work
        return await self.jobs.get(("open", run), lambda _progress: self.catalog.entry(run))

    def default_run(self) -> str | None:
        names = self.catalog.names()
        return names[0] if len(names) == 1 else None

    async def state(self, query: Query, *, need_run: bool = True) -> State | None:
        """Read run, epoch and image; open the run; fetch the image's pixels."""
        run = query.text("run") or self.default_run()
        if run is None:
            if need_run:
                raise BadRequest("no run chosen; pick one in the Runs view")
            return None
        entry = await self.entry(run)
        epoch = None
        if entry.subject.run is not None:
            epoch = query.integer("epoch", entry.last_epoch)
            if epoch not in entry.epochs:
                raise BadRequest(
                    f"run {run} has no snapshot for epoch {epoch}; epochs: {', '.join(map(str, entry.epochs))}"
                )
        data = entry.subject.data
        test_size = len(data.test) if data is not None else 0
        image = None if query.text("image") is None and not test_size else query.image(test_size)
        pixels = None if image is None else await self.pixels(entry, image)
        return State(run, entry, epoch, image, pixels)

    async def pixels(self, entry: Entry, image: ImageRef) -> Tensor:
        if image.index is not None:
            key = (entry.name, image.index)
            if key not in self._pixels:
                self._pixels[key] = entry.subject.data.test.pixels([image.index])
                while len(self._pixels) > FRAGMENTS:
                    self._pixels.popitem(last=False)
            return self._pixels[key]
        shape = entry.subject.image_shape
        if shape is None:
            raise BadRequest(f"{entry.name} takes no images of a known size; an upload cannot be fed to it")
        return await self.jobs.get(("upload", image.upload, shape), lambda _p: self.uploads.pixels(image.upload, shape))


def one_line(request: Request, status: int, message: str) -> Response:
    """An error as one line: an HTML fragment for the page (htmx), plain text for anything else."""
    line = message.splitlines()[0] if message else "error"
    if request.headers.get("hx-request"):
        return HTMLResponse(f'<p class="error">{html.escape(line)}</p>', status_code=status)
    return PlainTextResponse(line + "\n", status_code=status)


def guarded(handler: Handler) -> Handler:
    """Turn what a handler raises into one line with the right status; a bug is logged, never shown."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Superseded:
            return Response(status_code=204)
        except NotFound as exc:
            return one_line(request, 404, str(exc))
        except TooLarge as exc:
            return one_line(request, 413, str(exc))
        except (ValueError, TypeError) as exc:  # BadRequest, and the library's own checks of its input
            return one_line(request, 400, str(exc) or type(exc).__name__)
        except FileNotFoundError as exc:
            return one_line(request, 404, f"{exc.strerror or exc}: {exc.filename or ''}".strip(": "))
        except Exception:
            log.exception("error in %s", request.url.path)
            return one_line(request, 500, "internal error in the dashboard (a bug): the server's log has the details")

    wrapped.__name__ = handler.__name__
    return wrapped


def stats_handler(dash: Dashboard) -> Handler:
    async def stats(_request: Request) -> Response:
        """The pool's counters as JSON (for the load benchmark; counts, no timings)."""
        return JSONResponse({"workers": dash.jobs.workers, **dataclasses.asdict(dash.jobs.stats)})

    return stats


def create_app(
    roots: Sequence[Path | str] = (),
    *,
    subject: Subject | None = None,
    token: str | None = None,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
    workers: int = 2,
    max_upload_bytes: int | None = None,
    device: str = "cpu",
) -> Starlette:
    """Build the dashboard over the runs under `roots` (or one outside `subject`).

    `app.state.dashboard` holds its Dashboard (the jobs' counters, the token). Every request
    needs the token (see `mindscope.serve.security`) and a Host header naming this machine.
    """
    from mindscope.serve import parts

    catalog = Catalog(roots, subject=subject, device=device)
    uploads = Uploads() if max_upload_bytes is None else Uploads(max_bytes=max_upload_bytes)
    dash = Dashboard(catalog, workers=workers, token=token or new_token(), uploads=uploads)
    routes = [
        Route("/", guarded(parts.page_handler(dash))),
        *(Route(f"/part/{name}", guarded(handler)) for name, handler in parts.part_handlers(dash).items()),
        Route("/upload", guarded(parts.upload_handler(dash)), methods=["POST"]),
        Route("/stats", guarded(stats_handler(dash))),
        Mount("/static", StaticFiles(packages=[("mindscope.serve", "static")]), name="static"),
    ]
    middleware = [Middleware(Gate, token=dash.token, host=host, allowed=allowed_hosts)]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            dash.jobs.close()

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.dashboard = dash
    return app


def page_id() -> str:
    """A random id for one rendering of the page: its controls' slots."""
    return secrets.token_hex(4)
