"""An OTLP/HTTP receiver for the tests: an aiohttp server on loopback that
decodes what the exporters send (``ExportTraceServiceRequest`` and
``ExportMetricsServiceRequest`` protobuf, via opentelemetry-proto) and keeps it.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue


def value_of(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [value_of(x) for x in v.array_value.values]
    return getattr(v, which) if which else None


@dataclass
class Span:
    """One exported span, decoded: ids as lowercase hex, attributes as a dict."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    links: list[tuple[str, str]]
    status_code: int
    resource: dict[str, Any] = field(default_factory=dict)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"


class OtlpReceiver:
    """POST /v1/traces and /v1/metrics on 127.0.0.1 (a free port)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.metric_names: set[str] = set()
        self.metric_points: dict[str, list[tuple[dict[str, Any], float]]] = {}
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _body(self, request: web.Request) -> bytes:
        assert request.content_type == "application/x-protobuf", request.content_type
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.requests += 1
        return body

    async def _traces(self, request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest()
        req.ParseFromString(await self._body(request))
        for rs in req.resource_spans:
            resource = {a.key: value_of(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        Span(
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex(),
                            kind=s.kind,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            attributes={a.key: value_of(a.value) for a in s.attributes},
                            events=[
                                (
                                    e.name,
                                    e.time_unix_nano,
                                    {a.key: value_of(a.value) for a in e.attributes},
                                )
                                for e in s.events
                            ],
                            links=[(ln.trace_id.hex(), ln.span_id.hex()) for ln in s.links],
                            status_code=s.status.code,
                            resource=resource,
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        req = ExportMetricsServiceRequest()
        req.ParseFromString(await self._body(request))
        for rm in req.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    self.metric_names.add(m.name)
                    which = m.WhichOneof("data")
                    points = getattr(m, which).data_points if which in ("sum", "gauge") else []
                    out = self.metric_points.setdefault(m.name, [])
                    for p in points:
                        labels = {a.key: value_of(a.value) for a in p.attributes}
                        v = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                        out.append((labels, float(v)))
        return web.Response(
            body=ExportMetricsServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]

    def by_id(self, span_id: str) -> Span | None:
        for s in self.spans:
            if s.span_id == span_id:
                return s
        return None
