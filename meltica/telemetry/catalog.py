"""Every metric family Meltica exports, declared once: type, unit, HELP, labels.

Components keep plain counters (C integers in ``_core``, ints in Python) and
report them through ``stats()`` dicts; this catalogue says what each key is.
`stats_samples` turns one component's dict into `Sample`s through the
component's table in `STATS`; a key the table does not know raises
`UnknownStat` (a new counter must be declared here, with a real HELP, before
it is exported).  Nothing is inferred from names.

Names are given without the ``meltica_`` prefix and as they appear on the
wire: counters end in ``_total``, units are base units (``_seconds``,
``_bytes``), and values kept in nanoseconds are scaled to seconds here.
docs/metrics.md lists the same families (tests/test_metrics_doc.py checks a
real scrape against it).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from meltica.telemetry.metrics import LATENCY_BUCKETS, Histogram, Sample

__all__ = [
    "FAMILIES",
    "STATS",
    "Family",
    "UnknownStat",
    "family",
    "histogram",
    "sample",
    "stats_samples",
]

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


class UnknownStat(KeyError):
    """A component reported a stats key the catalogue does not declare."""


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: ``name`` without the ``meltica_`` prefix (counters end
    in ``_total``), ``kind`` counter/gauge/histogram, ``unit`` ("" for counts
    and ratios, else a base unit the name ends with), ``help``, ``labels``."""

    name: str
    kind: str
    unit: str
    help: str
    labels: tuple[str, ...] = ()


_M = ("market",)
_MS = ("market", "symbol")
_MR = ("market", "reason")

_DECLARED: tuple[Family, ...] = (
    Family(
        "build_info", GAUGE, "", "Always 1; the version label says which Meltica runs", ("version",)
    ),
    # ---------------------------------------------------------------- WebSocket
    Family("ws_connects_total", COUNTER, "", "WebSocket connections opened (handshake done)", _M),
    Family(
        "ws_connect_failures_total", COUNTER, "", "WebSocket connection attempts that failed", _M
    ),
    Family(
        "ws_reconnects_total", COUNTER, "", "Reconnects scheduled after a connection was lost", _M
    ),
    Family(
        "ws_rotations_total",
        COUNTER,
        "",
        "Planned connection rotations completed (new connection took over)",
        _M,
    ),
    Family(
        "ws_rotation_failures_total",
        COUNTER,
        "",
        "Planned connection rotations that failed (the old connection stayed)",
        _M,
    ),
    Family(
        "ws_server_shutdowns_total",
        COUNTER,
        "",
        "serverShutdown notices received from the exchange",
        _M,
    ),
    Family(
        "ws_ping_timeouts_total",
        COUNTER,
        "",
        "Connections dropped because no frame or pong came in time",
        _M,
    ),
    Family(
        "ws_subscribe_errors_total",
        COUNTER,
        "",
        "SUBSCRIBE/UNSUBSCRIBE requests the exchange answered with an error",
        _M,
    ),
    Family(
        "ws_duplicates_dropped_total",
        COUNTER,
        "",
        "Events dropped as duplicates while two connections overlapped (rotation, reconnect)",
        _M,
    ),
    Family("ws_frames_total", COUNTER, "", "WebSocket data frames received", _M),
    Family("ws_received_bytes_total", COUNTER, "bytes", "WebSocket payload bytes received", _M),
    Family("ws_events_total", COUNTER, "", "Events parsed from WebSocket frames", _M),
    Family(
        "ws_batches_total",
        COUNTER,
        "",
        "Event batches handed on (one per socket read with events)",
        _M,
    ),
    Family(
        "ws_replies_total",
        COUNTER,
        "",
        "Replies to SUBSCRIBE/UNSUBSCRIBE/LIST requests received",
        _M,
    ),
    Family(
        "ws_parse_errors_total",
        COUNTER,
        "",
        "WebSocket frames the parser rejected (all reasons)",
        _M,
    ),
    Family(
        "ws_fragmented_total",
        COUNTER,
        "",
        "Fragmented WebSocket messages reassembled and parsed",
        _M,
    ),
    Family(
        "ws_fragmented_refused_total",
        COUNTER,
        "",
        "Fragmented WebSocket messages refused whole (too large or broken)",
        _M,
    ),
    Family("ws_pings_total", COUNTER, "", "PING frames received from the exchange", _M),
    Family("ws_pongs_total", COUNTER, "", "PONG frames received from the exchange", _M),
    Family("ws_pongs_sent_total", COUNTER, "", "PONG frames sent to the exchange", _M),
    Family(
        "ws_msgs_sent_total",
        COUNTER,
        "",
        "Control messages sent (SUBSCRIBE, UNSUBSCRIBE, LIST)",
        _M,
    ),
    Family(
        "ws_ack_timeouts_total",
        COUNTER,
        "",
        "SUBSCRIBE/UNSUBSCRIBE requests not acknowledged in time",
        _M,
    ),
    Family("ws_connections", GAUGE, "", "WebSocket connections open now", _M),
    Family(
        "ws_slots", GAUGE, "", "Connection slots (groups of streams sharing one connection)", _M
    ),
    Family("ws_streams", GAUGE, "", "Exchange streams wanted", _M),
    Family(
        "ws_streams_acked",
        GAUGE,
        "",
        "Exchange streams the active connections have acknowledged",
        _M,
    ),
    Family(
        "ws_streams_silent",
        GAUGE,
        "",
        "Streams quiet for silence_timeout_s while their connection had data",
        _M,
    ),
    Family("ws_rotating", GAUGE, "", "Slots rotating now (a second connection is catching up)", _M),
    Family("ws_paused", GAUGE, "", "1 while reading is paused by Data Bus back-pressure", _M),
    Family(
        "ws_connects_last_window",
        GAUGE,
        "",
        "Connections opened in the exchange's connection-rate window",
        _M,
    ),
    Family(
        "ws_disconnects_total",
        COUNTER,
        "",
        "Disconnects of open WebSocket connections, by reason",
        _MR,
    ),
    Family(
        "ws_parse_rejects_total",
        COUNTER,
        "",
        "WebSocket frames the parser rejected, by error reason",
        _MR,
    ),
    Family(
        "exchange_latency_seconds",
        HISTOGRAM,
        "seconds",
        "Exchange event time to local receive, once per batch (its first event with an"
        " event time); includes the offset between the exchange's clock and ours",
        _M,
    ),
    # ---------------------------------------------------------------- REST
    Family("rest_requests_total", COUNTER, "", "REST requests sent (retries included)", _M),
    Family("rest_responses_total", COUNTER, "", "REST responses received", _M),
    Family("rest_retries_total", COUNTER, "", "REST requests retried", _M),
    Family("rest_rate_limited_total", COUNTER, "", "REST responses 429 (rate limited)", _M),
    Family("rest_banned_total", COUNTER, "", "REST responses 418 (IP banned) on this market", _M),
    Family("rest_server_errors_total", COUNTER, "", "REST responses 5xx", _M),
    Family("rest_timeouts_total", COUNTER, "", "REST requests that timed out", _M),
    Family(
        "rest_connection_errors_total",
        COUNTER,
        "",
        "REST requests that failed to connect or lost the connection",
        _M,
    ),
    Family(
        "rest_status_errors_total",
        COUNTER,
        "",
        "REST responses with another error status (4xx)",
        _M,
    ),
    Family(
        "rest_parse_errors_total", COUNTER, "", "REST response bodies that could not be parsed", _M
    ),
    Family(
        "rest_failures_total", COUNTER, "", "REST calls that failed for good (after retries)", _M
    ),
    Family(
        "rest_rejected_total",
        COUNTER,
        "",
        "REST calls refused before sending (weight over budget, bad request)",
        _M,
    ),
    Family("rest_deferred_total", COUNTER, "", "REST calls held back by the weight scheduler", _M),
    Family(
        "rest_urgent_total",
        COUNTER,
        "",
        "REST calls scheduled with urgent priority (book resyncs)",
        _M,
    ),
    Family("rest_weight_used_total", COUNTER, "", "REST request weight granted, all windows", _M),
    Family(
        "rest_weight_window",
        GAUGE,
        "",
        "REST request weight used in the current minute window (own estimate)",
        _M,
    ),
    Family(
        "rest_weight_budget",
        GAUGE,
        "",
        "REST request weight this gateway allows itself per minute window",
        _M,
    ),
    Family(
        "rest_weight_limit",
        GAUGE,
        "",
        "REST request weight limit per minute configured for the exchange",
        _M,
    ),
    Family(
        "rest_server_weight",
        GAUGE,
        "",
        "Weight the exchange last reported used by this IP (X-MBX-USED-WEIGHT-1M)",
        _M,
    ),
    Family("rest_queue_depth", GAUGE, "", "REST calls waiting for the weight scheduler", _M),
    Family(
        "rest_outstanding",
        GAUGE,
        "",
        "REST calls started and not finished (queued, in flight or retrying)",
        _M,
    ),
    Family("rest_in_flight", GAUGE, "", "REST requests sent and not yet answered", _M),
    Family(
        "rest_parse_rejects_total",
        COUNTER,
        "",
        "REST depth snapshot bodies the parser rejected, by error reason",
        _MR,
    ),
    Family("rest_bans_total", COUNTER, "", "418 bans received (all markets share one IP)"),
    Family("backfill_holes_total", COUNTER, "", "Trade id holes found (trade and agg trade)"),
    Family("backfill_ids_missing_total", COUNTER, "", "Trade ids inside the holes found"),
    Family("backfill_ids_filled_total", COUNTER, "", "Trade ids delivered from REST into holes"),
    Family("backfill_ids_lost_total", COUNTER, "", "Trade ids of holes reported lost"),
    Family("backfill_requests_total", COUNTER, "", "REST trade-by-id requests the backfill made"),
    Family("backfill_holes_filled_total", COUNTER, "", "Holes filled completely"),
    Family("backfill_holes_lost_total", COUNTER, "", "Holes with ids reported lost"),
    Family("backfill_waiting", GAUGE, "", "Holes queued for backfill"),
    Family(
        "rest_request_duration_seconds",
        HISTOGRAM,
        "seconds",
        "REST request latency, send to full response body, by endpoint",
        ("market", "endpoint"),
    ),
    # ---------------------------------------------------------------- Dispatcher
    Family("dispatch_requests_total", COUNTER, "", "Control requests the Dispatcher handled", ()),
    Family(
        "dispatch_failures_total",
        COUNTER,
        "",
        "Control requests that failed at the exchange (rolled back)",
        (),
    ),
    Family("dispatch_rejected_total", COUNTER, "", "Control requests rejected as invalid", ()),
    Family(
        "dispatch_rollbacks_total",
        COUNTER,
        "",
        "Partial subscriptions rolled back after a failure",
        (),
    ),
    Family("dispatch_rollback_errors_total", COUNTER, "", "Rollbacks that failed themselves", ()),
    Family(
        "dispatch_batches_total",
        COUNTER,
        "",
        "Mutating control requests applied to the dispatch table",
        (),
    ),
    Family("dispatch_instruments", GAUGE, "", "Instruments the Dispatcher has assigned an id", ()),
    Family(
        "dispatch_last_propagation_seconds",
        GAUGE,
        "seconds",
        "Propagation time of the last subscribe/unsubscribe, request to exchange ack",
        (),
    ),
    Family(
        "dispatch_max_propagation_seconds",
        GAUGE,
        "seconds",
        "Longest subscribe/unsubscribe propagation time so far",
        (),
    ),
    Family(
        "dispatch_dropped_total",
        COUNTER,
        "",
        "Events the dispatch table dropped, by reason (see docs/control-plane.md)",
        ("reason",),
    ),
    Family(
        "control_propagation_seconds",
        HISTOGRAM,
        "seconds",
        "Control request to applied (exchange ack and table updated), by operation",
        ("op",),
    ),
    # ---------------------------------------------------------------- Conductor and books
    Family("conductor_batches_total", COUNTER, "", "Event batches the Conductor processed", ()),
    Family(
        "conductor_control_total",
        COUNTER,
        "",
        "Control events the Conductor emitted (gap, resync, live)",
        (),
    ),
    Family(
        "conductor_store_writes_total",
        COUNTER,
        "",
        "Book snapshots written to the SnapshotStore",
        (),
    ),
    Family(
        "conductor_store_conflicts_total",
        COUNTER,
        "",
        "SnapshotStore writes lost to a version conflict",
        (),
    ),
    Family("conductor_store_errors_total", COUNTER, "", "SnapshotStore writes that raised", ()),
    Family(
        "conductor_hook_errors_total",
        COUNTER,
        "",
        "Analytics hook calls whose output was dropped (all hooks)",
        (),
    ),
    Family("conductor_derived_total", COUNTER, "", "Derived events emitted by analytics hooks", ()),
    Family(
        "conductor_flushes_total",
        COUNTER,
        "",
        "Throttled book outputs published at the end of their interval",
        (),
    ),
    Family(
        "analytics_hook_errors_total",
        COUNTER,
        "",
        "Analytics hook calls whose output was dropped, by hook and reason (raised, bad_output)",
        ("hook", "reason"),
    ),
    Family("book_gaps_total", COUNTER, "", "Sequence gaps detected in the depth stream", _MS),
    Family(
        "gaps_total",
        COUNTER,
        "",
        "Gap manifest entries closed, by stream (channel), cause and outcome "
        "(filled, resynced, lost)",
        ("stream", "cause", "outcome"),
    ),
    Family(
        "gaps_open",
        GAUGE,
        "",
        "Gap manifest entries still open (depth holes of a book that is resyncing)",
    ),
    Family(
        "gaps_write_errors_total",
        COUNTER,
        "",
        "Gap manifest lines that could not be written to gaps.path",
    ),
    Family(
        "book_resyncs_total",
        COUNTER,
        "",
        "Book resynchronisations started (gap, overflow, crossed, requested)",
        _MS,
    ),
    Family(
        "book_refetches_total",
        COUNTER,
        "",
        "Depth snapshots fetched again because they were older than the stream",
        _MS,
    ),
    Family(
        "book_buffer_overflows_total",
        COUNTER,
        "",
        "Sync buffers that overflowed snapshot_buffer_max (the sync restarts)",
        _MS,
    ),
    Family(
        "book_crossed_total",
        COUNTER,
        "",
        "Books found crossed (best bid >= best ask) and resynced",
        _MS,
    ),
    Family(
        "book_snapshot_errors_total",
        COUNTER,
        "",
        "Depth snapshot fetches that failed or were rejected",
        _MS,
    ),
    Family(
        "book_snapshot_backoffs_total",
        COUNTER,
        "",
        "Snapshot refetches delayed by the growing backoff",
        _MS,
    ),
    Family(
        "book_snapshot_retry_streak",
        GAUGE,
        "",
        "Snapshot attempts in a row that did not sync the book (0 once live)",
        _MS,
    ),
    Family("book_live", GAUGE, "", "1 while the book is live (synced), else 0", _MS),
    Family(
        "book_verified_bids",
        GAUGE,
        "",
        "Best bid levels known exact (covered by a snapshot, kept by every diff since)",
        _MS,
    ),
    Family(
        "book_verified_asks",
        GAUGE,
        "",
        "Best ask levels known exact (covered by a snapshot, kept by every diff since)",
        _MS,
    ),
    Family(
        "book_audits_total",
        COUNTER,
        "",
        "Book audits against a fresh REST snapshot, by outcome (match, mismatch, rotted, "
        "budget, failed, stale, aborted)",
        ("market", "outcome"),
    ),
    Family(
        "book_age_seconds",
        GAUGE,
        "seconds",
        "Seconds since the book last published an update (live books only)",
        _MS,
    ),
    # ---------------------------------------------------------------- Data Bus
    Family("bus_capacity", GAUGE, "", "Data Bus ring capacity (events)", ()),
    Family("bus_published_total", COUNTER, "", "Events published to the Data Bus", ()),
    Family("bus_depth", GAUGE, "", "Events the slowest consumer has not read", ()),
    Family(
        "bus_evicted_total",
        COUNTER,
        "",
        "Ring slots overwritten while a lossy consumer had not read them",
        (),
    ),
    Family("bus_consumers", GAUGE, "", "Data Bus consumers attached", ()),
    Family("bus_paused", GAUGE, "", "1 while a block consumer has the readers paused", ()),
    Family(
        "bus_pauses_total", COUNTER, "", "Times the readers were paused by a block consumer", ()
    ),
    Family("bus_resumes_total", COUNTER, "", "Times the readers were resumed", ()),
    Family(
        "bus_overflows_total",
        COUNTER,
        "",
        "Block consumers detached because they overflowed their reserve",
        (),
    ),
    Family("bus_wakeups_total", COUNTER, "", "Waiting consumers woken by a publish", ()),
    Family("bus_consumer_members", GAUGE, "", "Consumers attached in the group", ("consumer",)),
    Family(
        "bus_consumer_delivered_total",
        COUNTER,
        "",
        "Events delivered to the consumer group",
        ("consumer",),
    ),
    Family(
        "bus_consumer_dropped_total",
        COUNTER,
        "",
        "Matching events the consumer group lost (drop_oldest)",
        ("consumer",),
    ),
    Family(
        "bus_consumer_conflated_total",
        COUNTER,
        "",
        "Matching events superseded before the group read them (conflate)",
        ("consumer",),
    ),
    Family(
        "bus_consumer_gaps_total",
        COUNTER,
        "",
        "Gap markers delivered to the consumer group (drop_oldest)",
        ("consumer",),
    ),
    Family(
        "bus_consumer_wakeups_total",
        COUNTER,
        "",
        "Times the group's consumers were woken by a publish",
        ("consumer",),
    ),
    Family(
        "bus_consumer_lag",
        GAUGE,
        "",
        "Events not read yet by the group's most lagging consumer",
        ("consumer",),
    ),
    Family(
        "bus_consumer_capacity",
        GAUGE,
        "",
        "Most events a consumer of the group may lag (its capacity)",
        ("consumer",),
    ),
    Family(
        "pipeline_latency_seconds",
        HISTOGRAM,
        "seconds",
        "Local receive time to Data Bus publish, per batch (oldest event of the batch)",
        (),
    ),
    Family(
        "bus_delivery_latency_seconds",
        HISTOGRAM,
        "seconds",
        "Data Bus publish to consumer delivery, per batch read, by consumer group",
        ("consumer",),
    ),
    # ---------------------------------------------------------------- SnapshotStore
    Family("snapshot_entries", GAUGE, "", "SnapshotStore entries held", ()),
    Family("snapshot_max_entries", GAUGE, "", "SnapshotStore entry limit", ()),
    Family("snapshot_sets_total", COUNTER, "", "SnapshotStore writes accepted", ()),
    Family(
        "snapshot_mismatches_total",
        COUNTER,
        "",
        "SnapshotStore compare-and-set writes refused for a version mismatch",
        (),
    ),
    Family(
        "snapshot_refused_total",
        COUNTER,
        "",
        "SnapshotStore writes refused because the store was full",
        (),
    ),
    Family(
        "snapshot_expired_total", COUNTER, "", "SnapshotStore entries removed after their TTL", ()
    ),
    # ---------------------------------------------------------------- Redis SnapshotStore
    Family(
        "snapshot_redis_writes_total",
        COUNTER,
        "",
        "Book states written to Redis (the compare-and-set script stored them)",
        (),
    ),
    Family(
        "snapshot_redis_refused_total",
        COUNTER,
        "",
        "Redis writes refused because Redis held a newer version of the book",
        (),
    ),
    Family(
        "snapshot_redis_no_ops_total",
        COUNTER,
        "",
        "Redis writes that found the same version stored (left unchanged)",
        (),
    ),
    Family(
        "snapshot_redis_errors_total",
        COUNTER,
        "",
        "Redis pipelines, probes and single writes that failed (states kept and retried)",
        (),
    ),
    Family(
        "snapshot_redis_dropped_total",
        COUNTER,
        "",
        "Book states dropped because the Redis write queue held snapshot.redis_queue_max keys",
        (),
    ),
    Family("snapshot_redis_pipelines_total", COUNTER, "", "Redis write pipelines completed", ()),
    Family(
        "snapshot_redis_reconnects_total",
        COUNTER,
        "",
        "Times Redis became reachable again after a failure",
        (),
    ),
    Family("snapshot_redis_pending", GAUGE, "", "Book states queued for Redis (one per key)", ()),
    Family("snapshot_redis_queue_max", GAUGE, "", "Most keys the Redis write queue holds", ()),
    Family("snapshot_redis_connected", GAUGE, "", "1 while Redis answers, else 0", ()),
    # ---------------------------------------------------------------- /tail
    Family("tail_open", GAUGE, "", "/tail streams open now", ()),
    Family("tail_opened_total", COUNTER, "", "/tail streams opened", ()),
    Family("tail_rejected_total", COUNTER, "", "/tail requests rejected as bad requests", ()),
    Family(
        "tail_aborted_total",
        COUNTER,
        "",
        "/tail streams aborted at shutdown because the client stopped reading",
        (),
    ),
    # ---------------------------------------------------------------- NATS publisher
    Family("nats_published_total", COUNTER, "", "Events taken into the JetStream window", ()),
    Family("nats_acked_total", COUNTER, "", "JetStream publish acknowledgements received", ()),
    Family(
        "nats_duplicates_total",
        COUNTER,
        "",
        "Publishes JetStream acknowledged as duplicates (deduplication window)",
        (),
    ),
    Family("nats_ack_errors_total", COUNTER, "", "JetStream publishes answered with an error", ()),
    Family(
        "nats_late_acks_total",
        COUNTER,
        "",
        "Second acknowledgements of events published again",
        (),
    ),
    Family(
        "nats_republished_total",
        COUNTER,
        "",
        "Events published again (probes and the resend that ends an outage)",
        (),
    ),
    Family(
        "nats_window_depth", GAUGE, "", "JetStream publishes waiting for their acknowledgement", ()
    ),
    Family(
        "nats_window_capacity", GAUGE, "", "Most JetStream publishes allowed unacknowledged", ()
    ),
    Family(
        "nats_gaps_total",
        COUNTER,
        "",
        "gap control events published for subjects that lost events (outage_policy drop)",
        (),
    ),
    Family("nats_connected", GAUGE, "", "1 while the NATS connection is up", ()),
    Family("nats_disconnects_total", COUNTER, "", "NATS connection losses", ()),
    Family(
        "nats_outages_total",
        COUNTER,
        "",
        "JetStream outages (error replies, an ack timeout or a reconnect) that held the "
        "publishes until a probe was acknowledged",
        (),
    ),
    Family(
        "nats_outage_seconds_total",
        COUNTER,
        "seconds",
        "Seconds spent without a NATS connection",
        (),
    ),
    Family(
        "nats_dropped_total",
        COUNTER,
        "",
        "Events the JetStream publisher dropped (outage_policy drop), by reason",
        ("reason",),
    ),
    # ---------------------------------------------------------------- Control Bus
    Family(
        "control_requests_total", COUNTER, "", "Control Bus requests received (all transports)", ()
    ),
    Family("control_ok_total", COUNTER, "", "Control Bus requests answered ok", ()),
    Family("control_errors_total", COUNTER, "", "Control Bus requests answered with an error", ()),
    Family(
        "control_full_total",
        COUNTER,
        "",
        "Control Bus requests refused because max_pending were pending",
        (),
    ),
    Family("control_timeouts_total", COUNTER, "", "Control Bus requests that timed out", ()),
    Family("control_crashes_total", COUNTER, "", "Control Bus requests whose handler raised", ()),
    Family(
        "control_closed_total",
        COUNTER,
        "",
        "Control Bus requests refused because the bus was closing",
        (),
    ),
    Family(
        "control_malformed_total", COUNTER, "", "Control Bus requests that could not be decoded", ()
    ),
    Family("control_pending", GAUGE, "", "Control Bus requests pending now", ()),
    Family("control_max_pending", GAUGE, "", "Most Control Bus requests allowed pending", ()),
    Family("control_http_requests_total", COUNTER, "", "POST /control requests received", ()),
    Family(
        "control_http_unauthorized_total",
        COUNTER,
        "",
        "POST /control requests without the right token (401)",
        (),
    ),
    Family(
        "control_http_forbidden_total",
        COUNTER,
        "",
        "POST /control requests refused (403: not loopback, or no token configured)",
        (),
    ),
    Family(
        "control_http_oversized_total",
        COUNTER,
        "",
        "POST /control bodies over the size limit (413)",
        (),
    ),
    Family(
        "control_http_malformed_total",
        COUNTER,
        "",
        "POST /control bodies that were not a control request (400)",
        (),
    ),
    Family("control_nats_requests_total", COUNTER, "", "Control requests received over NATS", ()),
    Family("control_nats_replies_total", COUNTER, "", "Control replies sent over NATS", ()),
    Family(
        "control_nats_no_reply_total",
        COUNTER,
        "",
        "Control messages over NATS without a reply subject (not answered)",
        (),
    ),
    Family(
        "control_nats_oversized_total",
        COUNTER,
        "",
        "Control messages over NATS above the size limit",
        (),
    ),
    Family(
        "control_nats_not_broadcast_total",
        COUNTER,
        "",
        "Mutating control requests sent to the broadcast subject (refused)",
        (),
    ),
    Family(
        "control_nats_reply_failed_total",
        COUNTER,
        "",
        "Control replies over NATS that could not be sent",
        (),
    ),
    Family(
        "control_nats_dropped_total",
        COUNTER,
        "",
        "Control requests over NATS dropped with the pending queue full (answered with an error)",
        (),
    ),
    Family("control_nats_in_flight", GAUGE, "", "Control requests over NATS being handled now", ()),
    # ---------------------------------------------------------------- OpenTelemetry export
    # (exported only while OTLP is configured: docs/tracing.md)
    Family(
        "otel_spans_total",
        COUNTER,
        "",
        "Spans by outcome: exported to the collector, failed (the export failed: "
        "collector down, timeout) or dropped (the bounded queue was full)",
        ("outcome",),
    ),
    Family(
        "otel_span_queue",
        GAUGE,
        "",
        "Spans queued for export now (at most telemetry.trace_queue_size)",
        (),
    ),
    Family(
        "otel_batches_sampled_total",
        COUNTER,
        "",
        "Listener batches sampled for a span (telemetry.trace_sample_ratio)",
        (),
    ),
    Family(
        "otel_batch_span_seconds_total",
        COUNTER,
        "seconds",
        "Time the listeners spent making the spans of sampled batches (begin and end)",
        (),
    ),
    Family(
        "otel_span_export_cpu_seconds_total",
        COUNTER,
        "seconds",
        "CPU time the span export thread spent encoding and sending spans",
        (),
    ),
    Family(
        "otel_metrics_cpu_seconds_total",
        COUNTER,
        "seconds",
        "CPU time of the OTLP metric rounds (reading the counters, collecting, exporting)",
        (),
    ),
    Family(
        "otel_metric_exports_total",
        COUNTER,
        "",
        "OTLP metric export rounds by outcome (ok, failed)",
        ("outcome",),
    ),
)

FAMILIES: dict[str, Family] = {f.name: f for f in _DECLARED}

# Per component: stats key -> (family name, scale), or None for a key that is
# exported another way (by reason) or not at all.
_Stat = tuple[str, float] | None


def _same(prefix: str, keys: str, *, counters: str = "") -> dict[str, _Stat]:
    """``key -> prefix_key`` for gauges in `keys`, ``prefix_key_total`` for `counters`."""
    out: dict[str, _Stat] = {k: (f"{prefix}_{k}", 1.0) for k in keys.split()}
    out.update({k: (f"{prefix}_{k}_total", 1.0) for k in counters.split()})
    return out


STATS: dict[str, dict[str, _Stat]] = {
    "ws": {
        **_same(
            "ws",
            "connections slots streams streams_acked streams_silent rotating paused "
            "connects_last_window",
            counters="connects connect_failures reconnects rotations server_shutdowns "
            "ping_timeouts subscribe_errors duplicates_dropped frames events batches replies "
            "parse_errors fragmented fragmented_refused pings pongs pongs_sent msgs_sent "
            "ack_timeouts",
        ),
        "rotations_failed": ("ws_rotation_failures_total", 1.0),
        "bytes": ("ws_received_bytes_total", 1.0),
        "disconnects": None,  # ws_disconnects_total, by reason
    },
    "rest": {
        **_same(
            "rest",
            "server_weight queue_depth outstanding in_flight",
            counters="requests responses retries rate_limited banned server_errors timeouts "
            "connection_errors status_errors parse_errors failures rejected deferred urgent",
        ),
        "weight_used": ("rest_weight_used_total", 1.0),
        "window_weight": ("rest_weight_window", 1.0),
        "budget": ("rest_weight_budget", 1.0),
        "weight_limit": ("rest_weight_limit", 1.0),
        "bans": None,  # rest_bans_total, once (not per market)
    },
    "backfill": _same(
        "backfill",
        "waiting",
        counters="holes ids_missing ids_filled ids_lost requests holes_filled holes_lost",
    ),
    "dispatch": {
        **_same(
            "dispatch",
            "instruments",
            counters="requests rejected rollbacks rollback_errors batches",
        ),
        "failed": ("dispatch_failures_total", 1.0),
        "last_propagation_ns": ("dispatch_last_propagation_seconds", 1e-9),
        "max_propagation_ns": ("dispatch_max_propagation_seconds", 1e-9),
    },
    "conductor": _same(
        "conductor",
        "",
        counters="batches control store_writes store_conflicts store_errors hook_errors "
        "derived flushes",
    ),
    "book": {
        **_same(
            "book",
            "",
            counters="gaps resyncs refetches buffer_overflows crossed snapshot_errors "
            "snapshot_backoffs",
        ),
        "retry_streak": ("book_snapshot_retry_streak", 1.0),
        "verified_bids": ("book_verified_bids", 1.0),
        "verified_asks": ("book_verified_asks", 1.0),
    },
    "bus": _same(
        "bus",
        "capacity depth consumers paused",
        counters="published evicted pauses resumes overflows wakeups",
    ),
    "bus_consumer": {
        **_same(
            "bus_consumer",
            "members lag capacity",
            counters="delivered dropped conflated gaps wakeups",
        ),
        "failed": None,  # a failed consumer is detached at once: bus_overflows_total
    },
    "snapshot": _same(
        "snapshot", "entries max_entries", counters="sets mismatches refused expired"
    ),
    "snapshot_redis": _same(
        "snapshot_redis",
        "pending queue_max connected",
        counters="writes refused no_ops errors dropped pipelines reconnects",
    ),
    "tail": _same("tail", "open", counters="opened rejected aborted"),
    "nats": {
        **_same(
            "nats",
            "window_depth window_capacity connected",
            counters=(
                "published acked duplicates ack_errors late_acks republished gaps disconnects "
                "outages"
            ),
        ),
        "outage_seconds": ("nats_outage_seconds_total", 1.0),
    },
    "control": _same(
        "control",
        "pending max_pending",
        counters="requests ok errors full timeouts crashes closed malformed",
    ),
    "control_http": _same(
        "control_http", "", counters="requests unauthorized forbidden oversized malformed"
    ),
    "control_nats": _same(
        "control_nats",
        "in_flight",
        counters="requests replies no_reply oversized not_broadcast reply_failed dropped",
    ),
}


def family(name: str) -> Family:
    """The declared family `name` (KeyError if it is not declared)."""
    return FAMILIES[name]


def sample(name: str, value: float, **labels: str) -> Sample:
    """A `Sample` of the declared family `name`; `labels` must be exactly its labels."""
    fam = FAMILIES[name]
    if fam.kind == HISTOGRAM:
        raise ValueError(f"{name} is a histogram; use histogram()")
    if tuple(sorted(labels)) != tuple(sorted(fam.labels)):
        raise ValueError(f"{name} takes labels {fam.labels}, got {tuple(labels)}")
    return Sample(name, fam.kind, fam.help, float(value), tuple(sorted(labels.items())), fam.unit)


def histogram(name: str, buckets: tuple[float, ...] = LATENCY_BUCKETS, **labels: str) -> Histogram:
    """A new `Histogram` of the declared histogram family `name`."""
    fam = FAMILIES[name]
    if fam.kind != HISTOGRAM:
        raise ValueError(f"{name} is a {fam.kind}, not a histogram")
    if tuple(sorted(labels)) != tuple(sorted(fam.labels)):
        raise ValueError(f"{name} takes labels {fam.labels}, got {tuple(labels)}")
    return Histogram(name, fam.help, tuple(sorted(labels.items())), buckets, unit=fam.unit)


def stats_samples(
    source: str, stats: Mapping[str, float | None], **labels: str
) -> Iterator[Sample]:
    """`Sample`s of one component's ``stats()`` through its table in `STATS`.

    None values (not measured yet) are skipped; a key the table does not
    declare raises `UnknownStat`."""
    table = STATS[source]
    for key, value in stats.items():
        try:
            entry = table[key]
        except KeyError:
            raise UnknownStat(
                f"{source} stats key {key!r} is not declared in the catalogue"
            ) from None
        if entry is None or value is None:
            continue
        name, scale = entry
        yield sample(name, value * scale, **labels)
