"""The Scan view: its page and the parts its controls ask for.

A scan is named like a run (`scan=LABEL/PATH`, confined to the folders served) and read
with `mindscope.scan.open_scan`; only a finished scan is shown, an unfinished one gets one
line that says what to run. The page carries the scan and its method; the parts are each
class's mean map (every class, or one chosen with its numbers and its values as JSON), the
histogram of completeness errors, and the worst-converged and most confidently wrong images,
a page at a time, where clicking an image shows its map with its numbers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mindscope.report.scan_page import overview_section, scan_pixels
from mindscope.scan import Scan
from mindscope.serve.app import Dashboard, page_id
from mindscope.serve.params import BadRequest, Query
from mindscope.serve.scan_views import RANKINGS, class_values, classes_view, completeness_view, image_view, ranking_view

Handler = Callable[[Request], Awaitable[Response]]


def scan_link(name: str, method: str | None = None) -> str:
    """The page address of the scan `name` (with `method` chosen)."""
    params = {"view": "scan", "scan": name}
    if method is not None:
        params["method"] = method
    return "/?" + urlencode(params)


async def opened(dash: Dashboard, query: Query) -> tuple[str, Scan, str]:
    """(name, finished scan, method) of a request; NotFound for a name not served, a 400 for an unfinished scan."""
    names = dash.catalog.scan_names()
    name = query.text("scan") or (names[0] if len(names) == 1 else None)
    if name is None:
        raise BadRequest("no scan chosen; pick one in the Runs view")
    dash.catalog.resolve_scan(name)  # NotFound before any work

    def ready(_progress: object) -> Scan:
        scan = dash.catalog.scan(name)
        problem = scan.unfinished()
        if problem is not None:
            raise BadRequest(problem)  # not cached: a later request sees the scan once it is finished
        return scan

    scan = await dash.jobs.get(("scan", name), ready)
    methods = scan.plan.options.methods
    method = query.choice("method", list(methods), "integrated" if "integrated" in methods else methods[0])
    return name, scan, method


async def scan_page(dash: Dashboard, query: Query) -> Response:
    """The Scan view's page: what was scanned, the method, and the places its parts fill."""
    name, scan, method = await opened(dash, query)
    overview = await dash.jobs.get(("scan-overview", name), lambda _p: overview_section(scan))
    nav = [("runs", "Runs", "/?view=runs"), ("scan", "Scan", scan_link(name, method))]
    return dash.render(
        "page.html", view="scan", title=f"Scan {name}", state=None, thumb=None, nav=nav, page=page_id(), note="",
        scan_name=name, method=method, methods=scan.plan.options.methods, classes=scan.plan.classes,
        overview=overview, rankings=RANKINGS,
    )  # fmt: skip


def scan_part_handlers(dash: Dashboard) -> dict[str, Handler]:
    """{name: handler} of the Scan view's parts, served at /part/NAME."""
    jobs = dash.jobs

    async def pixels(name: str, scan: Scan):
        return await jobs.get(("scan-pixels", name), lambda _p: scan_pixels(scan))

    def chosen_class(query: Query, scan: Scan) -> int | None:
        value = query.text("class", "all")
        if value == "all":
            return None
        return query.integer("class", low=0, high=len(scan.plan.classes) - 1)

    async def classes(request: Request) -> Response:
        query = Query(request.query_params)
        name, scan, method = await opened(dash, query)
        chosen = chosen_class(query, scan)
        memo = ("scan-classes", name, method, chosen)
        if (hit := dash.rendered(memo)) is not None:
            return hit
        view = await jobs.get(memo, lambda _p: classes_view(scan, method, chosen), slot=query.text("slot"))
        values = None if chosen is None else "/part/scan-class-values?" + urlencode(
            {"scan": name, "method": method, "class": chosen}
        )  # fmt: skip
        return dash.render("part_scan_classes.html", memo=memo, view=view, values=values)

    async def class_values_part(request: Request) -> Response:
        query = Query(request.query_params)
        name, scan, method = await opened(dash, query)
        chosen = query.integer("class", low=0, high=len(scan.plan.classes) - 1)
        key = ("scan-class-values", name, method, chosen)
        return JSONResponse(await jobs.get(key, lambda _p: class_values(scan, method, chosen), keep=False))

    async def completeness(request: Request) -> Response:
        query = Query(request.query_params)
        name, scan, method = await opened(dash, query)
        memo = ("scan-completeness", name, method)
        if (hit := dash.rendered(memo)) is not None:
            return hit
        view = await jobs.get(memo, lambda _p: completeness_view(scan, method))
        return dash.render("part_scan_completeness.html", memo=memo, view=view)

    async def ranking_part(request: Request) -> Response:
        query = Query(request.query_params)
        name, scan, method = await opened(dash, query)
        which = query.choice("which", list(RANKINGS), "worst")
        page = query.integer("page", 0, low=0)
        memo = ("scan-list", name, which, method, page)
        if (hit := dash.rendered(memo)) is not None:
            return hit
        ranking = await jobs.get(("scan-ranking", name, which, method), lambda _p: scan.ranking(which, method))
        source = await pixels(name, scan)
        view = await jobs.get(memo, lambda _p: ranking_view(scan, source, ranking, which, method, page),
                              slot=query.text("slot"))  # fmt: skip
        return dash.render("part_scan_list.html", memo=memo, view=view, scan_name=name, method=method)

    async def image(request: Request) -> Response:
        query = Query(request.query_params)
        name, scan, method = await opened(dash, query)
        index = query.integer("index", low=0, high=scan.plan.images - 1)
        memo = ("scan-image", name, method, index)
        if (hit := dash.rendered(memo)) is not None:
            return hit
        source = await pixels(name, scan)
        view = await jobs.get(memo, lambda _p: image_view(scan, source, method, index))
        return dash.render("part_scan_image.html", memo=memo, view=view, method=method)

    return {
        "scan-classes": classes,
        "scan-class-values": class_values_part,
        "scan-completeness": completeness,
        "scan-list": ranking_part,
        "scan-image": image,
    }
