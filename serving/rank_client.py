"""A minimal HTTP client of the ranker service (``POST /v1/rank``) on the standard library.

Used by ``limaml score``, the serving benchmark and tests.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Tuple


def post_json(url: str, payload: Mapping[str, Any], timeout_s: float = 30.0) -> Tuple[int, Dict[str, Any]]:
    """POSTs JSON to ``url``; returns ``(HTTP status, decoded JSON body)`` for any status.

    Raises:
        RuntimeError: nothing answers at ``url``.
    """
    import urllib.error
    import urllib.request

    data = json.dumps(payload).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        body = err.read().decode("utf-8", errors="replace")
        try:
            return err.code, json.loads(body)
        except json.JSONDecodeError:
            return err.code, {"error": body}
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise RuntimeError(f"cannot reach the ranker service at {url}: {reason}; is `limaml "
                           "serve` running there?") from None


def rank_url(base_url: str) -> str:
    """``<base>/v1/rank`` for a ranker base URL (a full ``/v1/rank`` URL is kept)."""
    from serving.ranker_app import RANK_PATH

    base = base_url.rstrip("/")
    return base if base.endswith(RANK_PATH) else base + RANK_PATH
