"""`GET /metrics`: the Node's Prometheus metrics (events/node/metrics.py), this process's or, with
PROMETHEUS_MULTIPROC_DIR, every worker's, in the format the scraper asks for."""

from __future__ import annotations

from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..events.node.node import Runtime


async def metrics(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    # The text format 0.0.4 unless the scraper asks for OpenMetrics.
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    # Counted here, not in the collector: collectors cannot await the store.
    await rt.hub.measure_backlog()
    rt.metrics.before_scrape()
    return Response(encode(rt.metrics.exposed), headers={"Content-Type": content_type})


routes = [Route("/metrics", metrics)]
