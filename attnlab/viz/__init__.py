"""``attnlab viz``: a local web app over ``attnlab.analysis``.

Library choice: the server is the standard library's ``http.server.ThreadingHTTPServer`` (no web framework
to install or keep in step: the app has six JSON/static routes), and the plots are **plotly.js**, served
from the ``plotly`` PyPI package's bundled ``package_data/plotly.min.js``. plotly.js is actively maintained,
draws interactive heatmaps (hover values, zoom) and bar charts out of the box, and the wheel ships the whole
minified bundle, so the app works fully offline: no CDN, no npm step. Install with ``pip install attnlab[viz]``.
"""

from .server import VizServer, make_server, plotly_js_path, serve

__all__ = ["VizServer", "make_server", "plotly_js_path", "serve"]
