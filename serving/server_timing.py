"""The ranker's ``Server-Timing`` response header: where a ranking request's time went.

Every ``POST /v1/rank`` answer carries a W3C ``Server-Timing`` header (``name;dur=<ms>``
entries, comma-separated; browsers' developer tools, proxies and the serving benchmark read it)::

    Server-Timing: prepare;dur=0.231, queue;dur=0.000, predict;dur=2.140, total;dur=2.612

Metrics (milliseconds; one is left out when it does not apply to the request):

* ``prepare``: parsing, validation, embedding lookup and encoding the rows, up to the Predict
  (the event loop's batching path only);
* ``queue``: waiting for the Predict in flight to return before the Predict that carried this
  request went out (batching path; 0 for a request that found no Predict in flight);
* ``predict``: the round trip of that Predict to the model server (gRPC both ways and the
  model), shared by every request it carried;
* ``total``: from the request's body being read to its answer being encoded.

``total - queue - predict`` is the ranker's own time; the client's latency minus ``total`` is
HTTP and the client. :func:`parse_server_timing` reads a header back (``limaml bench serve``
reports these per row).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, Optional

HEADER = b"server-timing"
METRICS = ("prepare", "queue", "predict", "total")


@dataclass
class RankTiming:
    """One request's durations in seconds (None: not measured for this request).

    ``started_at`` is the ``time.perf_counter()`` reading ``total`` counts from.
    """

    started_at: Optional[float] = None
    prepare_s: Optional[float] = None
    queue_s: Optional[float] = None
    predict_s: Optional[float] = None
    total_s: Optional[float] = None

    def finish(self) -> bytes:
        """Sets ``total_s`` (now - ``started_at``) and returns :meth:`header_value`."""
        if self.started_at is not None:
            self.total_s = time.perf_counter() - self.started_at
        return self.header_value()

    def header_value(self) -> bytes:
        """The ``Server-Timing`` value: measured metrics in :data:`METRICS` order, in ms."""
        parts = []
        for name in METRICS:
            seconds = getattr(self, f"{name}_s")
            if seconds is not None:
                parts.append(f"{name};dur={max(seconds, 0.0) * 1000.0:.3f}")
        return ", ".join(parts).encode("ascii")


def parse_server_timing(value: Optional[str]) -> Dict[str, float]:
    """Metric name -> duration in ms from a ``Server-Timing`` header value.

    Entries without a numeric ``dur`` parameter (or unparsable ones) are skipped; names are
    lower-cased; a repeated name keeps its first duration.

    Args:
        value: the header value, e.g. ``"predict;dur=2.1, total;dur=2.6"``, or None.

    Returns:
        ``{"predict": 2.1, "total": 2.6}``; empty for None or an empty header.
    """
    out: Dict[str, float] = {}
    for entry in (value or "").split(","):
        name, *params = [p.strip() for p in entry.split(";")]
        if not name:
            continue
        for param in params:
            key, _, raw = param.partition("=")
            if key.strip().lower() != "dur":
                continue
            try:
                out.setdefault(name.lower(), float(raw.strip().strip('"')))
            except ValueError:
                pass
            break
    return out


__all__ = ["HEADER", "METRICS", "RankTiming", "parse_server_timing"]
