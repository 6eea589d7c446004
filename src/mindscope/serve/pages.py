"""The page (one per view, reached by links and swapped in place by htmx) and uploads.

A view's page carries its controls; the figures come from the parts (`mindscope.serve.parts`),
which the controls ask for when the page loads and whenever they change.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mindscope.serve.activation_views import check_layer
from mindscope.serve.app import VIEWS, Dashboard, State, page_id
from mindscope.serve.attribution_views import BASELINES, METHODS
from mindscope.serve.catalog import RunInfo, ScanInfo
from mindscope.serve.params import BadRequest, Query
from mindscope.serve.scan_parts import scan_link, scan_page
from mindscope.serve.training_views import weight_tensors
from mindscope.serve.uploads import TooLarge

DEFAULT_LAYER = "L3"  # the walk-through's first look at activations


async def run_infos(dash: Dashboard) -> list[RunInfo]:
    """Every run's line of the Runs view, read afresh (runs may be training), in the pool."""
    catalog = dash.catalog
    return await dash.jobs.get(("runs",), lambda _p: [catalog.info(n) for n in catalog.names()], keep=False)


async def scan_infos(dash: Dashboard) -> list[ScanInfo]:
    """Every scan's line of the Runs view, read afresh (scans may be running), in the pool."""
    catalog = dash.catalog
    return await dash.jobs.get(("scans",), lambda _p: [catalog.scan_info(n) for n in catalog.scan_names()], keep=False)


async def layers(dash: Dashboard, state: State) -> list[tuple[str, str, tuple[int, ...]]]:
    entry = state.entry

    def find(_progress: object) -> list:
        with entry.lock:
            return entry.map_layers()

    return await dash.jobs.get(("layers", state.run), find)


async def default_layer(dash: Dashboard, state: State) -> str:
    found = await layers(dash, state)
    try:
        name = (
            await dash.jobs.get(("layer", state.run, DEFAULT_LAYER), lambda _p: check_layer(state.entry, DEFAULT_LAYER))
        )[0]
    except ValueError:
        name = found[0][0] if found else ""
    return name


async def view_context(dash: Dashboard, view: str, state: State | None) -> dict[str, object]:
    """What the view's controls offer: tensors, layers, classes, methods, other runs."""
    if view == "runs":
        roots = ", ".join(map(str, dash.catalog.roots.values()))
        return {"runs": await run_infos(dash), "scans": await scan_infos(dash), "roots": roots, "scan_link": scan_link}
    entry = state.entry
    context: dict[str, object] = {"classes": entry.subject.classes, "methods": METHODS, "baselines": BASELINES}
    history = entry.subject.run is not None
    if view == "weights" and history:
        context["tensors"] = await dash.jobs.get(("tensors", state.run), lambda _p: weight_tensors(entry))
    if view in ("activations", "compare") and entry.subject.image_shape is not None:
        context["layers"] = await layers(dash, state)
        context["default_layer"] = await default_layer(dash, state)
    if view == "compare":
        infos = await run_infos(dash)
        mine = next((i for i in infos if i.name == state.run), None)
        context["others"] = [
            i for i in infos if mine is not None and i.same_data == mine.same_data and i.name != state.run
        ]
    return context


def page_handler(dash: Dashboard):
    async def page(request: Request) -> Response:
        query = Query(request.query_params)
        names = [name for name, _ in VIEWS]
        runs, scans = dash.catalog.names(), dash.catalog.scan_names()
        if not runs and len(scans) == 1:
            # `mindscope serve SCAN_DIR`; an unfinished scan has no views: the Runs view says what to run
            default = "scan" if dash.catalog.scan(scans[0]).complete else "runs"
        else:
            default = "training" if len(runs) + len(scans) == 1 else "runs"  # none yet: the Runs view says so
        view = query.choice("view", [*names, "scan"], default)
        if view == "scan":
            return await scan_page(dash, query)
        state = await dash.state(query, need_run=False)
        note = ""
        if state is None and view != "runs":
            view, note = "runs", "pick a run first"
        context = await view_context(dash, view, state)
        thumb = None if state is None or state.pixels is None else dash.thumbnail(state)

        def link(name: str, **extra: object) -> str:
            if state is None:
                return "/?" + urlencode({"view": name, **{k: v for k, v in extra.items() if v is not None}})
            if "run" in extra and extra["run"] != state.run:  # another run: its own epochs, same image
                other = State(str(extra.pop("run")), state.entry, None, state.image, None)
                return other.link(name, **extra)
            return state.link(name, **extra)

        return dash.render(
            "page.html",
            view=view,
            title=dict(VIEWS)[view],
            state=state,
            thumb=thumb,
            link=link,
            nav=[(name, label, link(name)) for name, label in VIEWS] if runs else [("runs", "Runs", link("runs"))],
            page=page_id(),
            note=note,
            history=state is not None and state.entry.subject.run is not None,
            outside=dash.catalog.outside,
            **context,
        )

    return page


def upload_handler(dash: Dashboard):
    async def upload(request: Request) -> Response:
        """POST raw PNG/JPEG bytes; the answer is the image's id and the page that shows it."""
        query = Query(request.query_params)
        state = await dash.state(query)
        shape = state.entry.subject.image_shape
        if shape is None:
            raise BadRequest(f"{state.run} takes no images of a known size; an upload cannot be fed to it")
        limit = dash.uploads.max_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise TooLarge(f"the upload is {int(declared):,} bytes, more than the {limit:,} allowed")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise TooLarge(f"the upload is more than the {limit:,} bytes allowed")
        data = bytes(body)
        digest = hashlib.sha256(data).hexdigest()
        key = await dash.jobs.get(("add", digest, shape), lambda _p: dash.uploads.add(data, shape), keep=False)
        view = query.choice("view", [name for name, _ in VIEWS], "images")
        with_upload = State(state.run, state.entry, state.epoch, None, None).link(view, image=key)
        return JSONResponse({"image": key, "page": with_upload})

    return upload
