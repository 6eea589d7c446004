"""The parts of the page that controls ask for: figures with their numbers, or progress while they are made.

Each part reads run/epoch/image (the page's state) and its own controls, asks the pool for
its computation under a key of everything it depends on, and renders a template. Long jobs
(predictions for the Images filter, a layer's top images, the trust checks) run in the
background and answer with progress that polls itself until the result is there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable

import torch
from starlette.requests import Request
from starlette.responses import Response

from mindscope.serve.activation_views import (
    LOOKS_STEPS,
    channel_picture,
    check_layer,
    grid_picture,
    layer_scores,
    looks_picture,
    top_view,
)
from mindscope.serve.app import Dashboard, State
from mindscope.serve.attribution_views import (
    ALPHAS,
    BASELINES,
    METHODS,
    Setting,
    attribution_view,
    interior_view,
)
from mindscope.serve.jobs import Work
from mindscope.serve.pages import page_handler, upload_handler
from mindscope.serve.params import BadRequest, Query
from mindscope.serve.pictures import image_src
from mindscope.serve.scan_parts import scan_part_handlers
from mindscope.serve.training_views import Filter, predictions, training_picture, weights_view
from mindscope.serve.trust_view import trust_view

PAGE_SIZE = 48  # thumbnails per page of the Images view
POLL_MS = 600  # how often a progress part asks again
MAX_MORE = 7  # trust: test images beyond the chosen one

__all__ = ["page_handler", "part_handlers", "upload_handler"]


def attribution_setting(query: Query, state: State) -> Setting:
    method = query.choice("method", list(METHODS), "integrated")
    target = query.target(state.entry.subject.classes)
    baseline = query.choice("baseline", list(BASELINES), "black")
    tolerance = query.number("tolerance", 0.01, low=0.0, high=1.0, hint="such as 0.01")
    return Setting(method, target, baseline, tolerance)


def attribution_key(state: State, setting: Setting) -> tuple:
    path = setting.method == "integrated"  # only a path method depends on the tolerance
    filled = setting.method in ("integrated", "occlusion")  # these start from (or fill with) the baseline
    return (
        "attribution",
        state.run,
        state.epoch,
        state.image.key,
        setting.method,
        setting.target,
        setting.baseline if filled else None,
        setting.tolerance if path else None,
    )


def part_handlers(dash: Dashboard) -> dict[str, Callable[[Request], Awaitable[Response]]]:
    """{name: handler} of every part, served at /part/NAME."""
    jobs = dash.jobs

    async def begin(request: Request) -> tuple[Query, State]:
        query = Query(request.query_params)
        return query, await dash.state(query)

    def progress_or(request: Request, key: Hashable, work: Work) -> Response | None:
        """Start (or look in on) a background job: None when its result is cached, else a progress part."""
        status = jobs.start(key, work)
        if status.error is not None:
            raise BadRequest(status.error)
        if status.done:
            return None
        url = request.url.path + "?" + request.url.query
        return dash.render("part_progress.html", url=url, status=status, delay=POLL_MS)

    async def layer_of(state: State, spec: str) -> tuple[str, str, tuple[int, ...]]:
        """(name, label, (C, H, W)) of a layer with channel maps in the state's run; a 400 for any other."""
        return await jobs.get(("layer", state.run, spec), lambda _p: check_layer(state.entry, spec))

    async def grid(state: State, layer: str, slot: str | None = None):
        pixels = state.require_image()
        key = ("grid", state.run, state.epoch, state.image.key, layer)
        return await jobs.get(
            key, lambda _p: grid_picture(state.entry, state.epoch, pixels, layer, state.caption), slot=slot
        )

    async def attribution(state: State, setting: Setting, slot: str | None = None):
        pixels = state.require_image()
        work = lambda _p: attribution_view(state.entry, state.epoch, pixels, setting, state.caption)  # noqa: E731
        return await jobs.get(attribution_key(state, setting), work, slot=slot)

    async def training(request: Request) -> Response:
        _, state = await begin(request)
        memo = ("training", state.run)
        if (hit := dash.rendered(memo)) is not None:
            return hit
        picture = await jobs.get(memo, lambda _p: training_picture(state.entry))
        return dash.render("part_training.html", memo=memo, picture=picture)

    async def weights(request: Request) -> Response:
        query, state = await begin(request)
        tensor = query.text("tensor", "features.0.weight")
        epoch = query.integer("wepoch", state.entry.last_epoch if state.entry.subject.run is not None else 0)
        key = ("weights", state.run, tensor, epoch)
        if (hit := dash.rendered(key)) is not None:
            return hit
        view = await jobs.get(key, lambda _p: weights_view(state.entry, tensor, epoch), slot=query.text("slot"))
        return dash.render("part_weights.html", memo=key, view=view, tensor=tensor, epoch=epoch)

    async def images(request: Request) -> Response:
        query, state = await begin(request)
        classes = state.entry.subject.classes
        state.entry.subject.require_data("browsing the test set")
        top = len(classes) - 1
        true = query.integer("true", -1, low=-1, high=top)
        pred = query.integer("pred", -1, low=-1, high=top)
        chosen = Filter(
            None if true < 0 else true,
            None if pred < 0 else pred,
            query.choice("outcome", ["all", "right", "wrong"], "all"),
            query.number("low", 0.0, low=0.0, high=1.0, closed=True),
            query.number("high", 1.0, low=0.0, high=1.0, closed=True),
        )
        page = query.integer("page", 0, low=0)
        key = ("predictions", state.run, state.epoch)
        waiting = progress_or(request, key, lambda p: predictions(state.entry, state.epoch, p))
        if waiting is not None:
            return waiting
        memo = ("images", state.run, state.epoch, chosen, page)
        if (hit := dash.rendered(memo)) is not None:
            return hit
        result = jobs.cached(key)[1]
        found = chosen.select(result)
        pages = max(1, -(-len(found) // PAGE_SIZE))
        if page >= pages:
            raise BadRequest(f"page {page} is out of range; the filter leaves {pages} page(s), 0..{pages - 1}")
        shown = found[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
        test = state.entry.subject.data.test
        thumbs = [
            {
                "index": int(i),
                "src": image_src(test.pixels([int(i)])[0]),
                "label": f"#{i}: {classes[int(result.labels[i])]} → {classes[int(result.predicted[i])]} "
                f"({result.confidence[i]:.2f})",
                "right": bool(result.labels[i] == result.predicted[i]),
            }
            for i in shown
        ]
        return dash.render(
            "part_images.html", memo=memo, thumbs=thumbs, found=len(found), total=len(result.labels), page=page,
            pages=pages, accuracy=result.accuracy, state=state,
        )  # fmt: skip

    async def activations(request: Request) -> Response:
        query, state = await begin(request)
        layer = query.text("layer", "L3")
        name, label, shape = await layer_of(state, layer)
        memo = ("grid", state.run, state.epoch, state.image.key, name)
        if (hit := dash.rendered(memo)) is not None:
            return hit
        picture = await grid(state, name, query.text("slot"))
        return dash.render("part_activations.html", memo=memo, picture=picture, layer=name, label=label, shape=shape)

    async def channel(request: Request) -> Response:
        query, state = await begin(request)
        layer = query.text("layer", "L3")
        name, label, (count, _, _) = await layer_of(state, layer)
        number = query.integer("channel", low=0, high=count - 1)
        pixels = state.require_image()
        key = ("channel", state.run, state.epoch, state.image.key, name, number)
        if (hit := dash.rendered(key)) is not None:
            return hit
        picture = await jobs.get(key, lambda _p: channel_picture(state.entry, state.epoch, pixels, name, number))
        return dash.render(
            "part_channel.html", memo=key, picture=picture, layer=name, label=label, channel=number,
            caption=state.caption, data=state.entry.subject.data,
        )  # fmt: skip

    async def looks(request: Request) -> Response:
        query, state = await begin(request)
        name, label, (count, _, _) = await layer_of(state, query.text("layer", "L3"))
        number = query.integer("channel", low=0, high=count - 1)
        key = ("looks", state.run, state.epoch, name, number)
        if (hit := dash.rendered(key)) is not None:
            return hit
        picture, reached = await jobs.get(key, lambda _p: looks_picture(state.entry, state.epoch, name, number))
        return dash.render(
            "part_looks.html", memo=key, picture=picture, layer=name, label=label, channel=number,
            reached=reached, steps=LOOKS_STEPS,
        )  # fmt: skip

    async def topk(request: Request) -> Response:
        query, state = await begin(request)
        layer = query.text("layer", "L3")
        name, _, (count, _, _) = await layer_of(state, layer)
        number = query.integer("channel", low=0, high=count - 1)
        state.entry.subject.require_data("the top images of a channel")
        key = ("scores", state.run, state.epoch, name)
        waiting = progress_or(request, key, lambda p: layer_scores(state.entry, state.epoch, name, p))
        if waiting is not None:
            return waiting
        scores = jobs.cached(key)[1]
        memo = ("topk", state.run, state.epoch, name, number)
        if (hit := dash.rendered(memo)) is not None:
            return hit
        view = await jobs.get(memo, lambda _p: top_view(state.entry, state.epoch, name, number, scores))
        return dash.render("part_topk.html", memo=memo, view=view, layer=name, channel=number)

    async def attribution_part(request: Request) -> Response:
        query, state = await begin(request)
        setting = attribution_setting(query, state)
        if setting.method == "interior":
            state.require_image()
            return dash.render("part_interior.html", alphas=ALPHAS, start=ALPHAS.index(0.5), slot=query.text("slot"))
        memo = attribution_key(state, setting)
        if (hit := dash.rendered(memo)) is not None:
            return hit
        view = await attribution(state, setting, query.text("slot"))
        return dash.render("part_attribution.html", memo=memo, view=view, method=setting.method)

    async def alpha(request: Request) -> Response:
        query, state = await begin(request)
        setting = attribution_setting(query, state)
        k = query.integer("k", ALPHAS.index(0.5), low=0, high=len(ALPHAS) - 1)
        pixels = state.require_image()
        base = ("interior", state.run, state.epoch, state.image.key, setting.target, setting.baseline)
        interior = await jobs.get(base, lambda _p: interior_view(state.entry, state.epoch, pixels, setting))
        a = ALPHAS[k]
        if (hit := dash.rendered((*base, "frame", a))) is not None:
            return hit
        frame = await jobs.get((*base, "frame", a), lambda _p: interior.frame(a), slot=query.text("slot"))
        return dash.render(
            "part_alpha.html", memo=(*base, "frame", a), frame=frame, alpha=a, values=interior.at(a),
            curve=interior.curve, markers=interior.markers[a],
        )  # fmt: skip

    async def trust(request: Request) -> Response:
        query, state = await begin(request)
        baseline = query.choice("baseline", list(BASELINES), "black")
        tolerance = query.number("tolerance", 0.01, low=0.0, high=1.0, hint="such as 0.01")
        more = query.integer("more", 0, low=0, high=MAX_MORE)
        pixels = state.require_image()
        data = state.entry.subject.data
        size = len(data.test) if data is not None else 0
        first = state.image.index + 1 if state.image.index is not None else 0
        extra = [i for i in range(first, first + more) if i < size]
        names = [state.image.label.replace("test image ", "")] + [f"#{i}" for i in extra]
        key = ("trust", state.run, state.epoch, state.image.key, tuple(extra), baseline, tolerance)
        if jobs.status(key) is None and query.text("start") != "1":
            return dash.render("part_trust.html", view=None, names=names)
        batch = torch.cat([pixels, data.test.pixels(extra)]) if extra else pixels
        masks = None
        if state.image.index is not None and data.test.masks is not None:
            masks = data.test.masks[[state.image.index, *extra]]

        def work(progress):
            return trust_view(state.entry, state.epoch, batch, masks, names, baseline, tolerance, progress)

        waiting = progress_or(request, key, work)
        if waiting is not None:
            return waiting
        return dash.render("part_trust.html", view=jobs.cached(key)[1], names=names)

    async def compare(request: Request) -> Response:
        query, state = await begin(request)
        other_name = query.text("other")
        if other_name is None:
            raise BadRequest("choose a second run to compare with")
        if other_name == state.run:
            raise BadRequest(f"{other_name} is the run on the left; choose another run of the same data")
        infos = {
            name: await jobs.get(("info", name), lambda _p, n=name: dash.catalog.info(n))
            for name in (state.run, other_name)
        }
        if infos[state.run].same_data != infos[other_name].same_data:
            raise BadRequest(
                f"{other_name} looks at other data ({infos[other_name].data}); choose a run of the same data"
            )
        other_entry = await dash.entry(other_name)
        pixels = state.pixels if state.image.index is not None else await dash.pixels(other_entry, state.image)
        other = State(other_name, other_entry, other_entry.last_epoch, state.image, pixels)
        what = query.choice("what", ["activations", "attribution"], "activations")
        if what == "activations":
            layer = query.text("layer", "L3")
            found = [await layer_of(s, layer) for s in (state, other)]
            if found[0][0] != found[1][0]:
                raise BadRequest(f"layer {layer!r} is {found[0][0]} in one run and {found[1][0]} in the other")
            pictures = await asyncio.gather(grid(state, found[0][0]), grid(other, found[1][0]))
            label = found[0][1]
        else:
            setting = attribution_setting(query, state)
            if setting.method == "interior":
                raise BadRequest(
                    "side by side shows gradient, integrated or smoothgrad maps; the α slider is in Attributions"
                )
            views = await asyncio.gather(attribution(state, setting), attribution(other, setting))
            pictures, label = [v.picture for v in views], METHODS[setting.method]
        columns = [(s.run, s.epoch, p) for s, p in zip((state, other), pictures)]
        return dash.render("part_compare.html", columns=columns, what=what, label=label)

    return {
        "training": training,
        "weights": weights,
        "images": images,
        "activations": activations,
        "channel": channel,
        "topk": topk,
        "looks": looks,
        "attribution": attribution_part,
        "alpha": alpha,
        "trust": trust,
        "compare": compare,
        **scan_part_handlers(dash),
    }
