"""`mindscope serve`: a live, local dashboard to explore runs (or one outside model).

One page, reached by links: the runs, training curves, weights at any epoch, the test
images, a layer's channels, attributions with their accuracy (and the alpha slider of
interior gradients), the trust checks, and two runs side by side. Starlette and uvicorn
serve it; htmx (vendored in `static/`, with its license) swaps parts of it in place.

- `app`: routes, errors as one line, the page; `pages`, `parts`: the handlers.
- `jobs`: the bounded worker pool, cache, in-flight sharing, superseded requests dropped.
- `catalog`: which runs may be opened (confined to the folders given), opened ones kept.
- `security`: the token and the Host check; `uploads`: size limits and the bomb guard.
- `training_views`, `activation_views`, `attribution_views`, `trust_view`: the computations,
  each a look and a `mindscope.render` figure; `pictures`: figures as PNG with hover boxes.
- `server`: uvicorn on a socket bound first (port 0 for tests), in a thread or in front.
"""

from mindscope.serve.app import Dashboard, create_app
from mindscope.serve.server import Running, address, bind, serve_forever, start

__all__ = ["Dashboard", "Running", "address", "bind", "create_app", "serve_forever", "start"]
