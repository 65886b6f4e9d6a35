"""Which committed versions a store may retire: served and blessed versions first stay.

Both stores (:mod:`embeddings.parquet_store`, :mod:`embeddings.bigtable_store`) commit every
run's version *before* it is evaluated (meta-embedding generation runs ahead of the Evaluator),
so retiring by commit order alone would delete the served version after a few unblessed runs.
Instead each store keeps a small **serving pin** record, written when a version is pushed
(:meth:`ServingPins.pushed`; the BlockPusher calls the store's ``mark_pushed``):

* ``serving``: the version pushed last (what the model server serves);
* ``previous``: the version served before it (kept for a rollback);
* ``blessed``: every version ever pushed (blessed), oldest push first (bounded).

:func:`versions_to_retire` applies the policy after each commit (or on demand):

1. never retired: ``serving``, ``previous`` and the newest commit (the version being evaluated
   now, which the pusher may push next);
2. when more than ``keep`` versions are committed, the excess is retired from the rest:
   unblessed versions first (oldest commit first), then formerly blessed ones (oldest first).

The protected versions are kept even when they alone exceed ``keep``.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from embeddings.record import validate_model_version

MAX_BLESSED_REMEMBERED = 256


@dataclasses.dataclass(frozen=True)
class ServingPins:
    """What serving uses, as recorded in a store (see the module docstring).

    Attributes:
        serving: version pushed last, or None before any push.
        previous: version served before ``serving`` (rollback target), or None.
        blessed: versions ever pushed, oldest push first (at most
            :data:`MAX_BLESSED_REMEMBERED`).
        updated_at_us: unix microseconds of the last push recorded (0 if none).
    """

    serving: Optional[str] = None
    previous: Optional[str] = None
    blessed: Tuple[str, ...] = ()
    updated_at_us: int = 0

    def protected(self) -> Tuple[str, ...]:
        """Versions that must never be retired because serving uses or may roll back to them."""
        return tuple(v for v in (self.serving, self.previous) if v is not None)

    def pushed(self, model_version: str, now_us: int) -> "ServingPins":
        """The pins after ``model_version`` was pushed (blessed) at ``now_us``.

        Pushing the serving version again changes nothing but the time; pushing another one
        makes the current serving version the rollback target.
        """
        version = validate_model_version(model_version)
        previous = self.previous if version == self.serving else self.serving
        blessed = [v for v in self.blessed if v != version] + [version]
        return ServingPins(serving=version, previous=previous,
                           blessed=tuple(blessed[-MAX_BLESSED_REMEMBERED:]),
                           updated_at_us=int(now_us))

    def to_json(self) -> str:
        """The record as stored (compact, sorted keys)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ServingPins":
        """Parses :meth:`to_json` output.

        Raises:
            ValueError: not a pin record (the message shows the start of the text).
        """
        try:
            raw: Dict[str, Any] = json.loads(text)
            return cls(serving=raw.get("serving"), previous=raw.get("previous"),
                       blessed=tuple(raw.get("blessed", ())),
                       updated_at_us=int(raw.get("updated_at_us", 0)))
        except (ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"serving pin record {text[:80]!r} is not valid JSON of "
                             f"ServingPins ({err}); rewrite it by pushing the served version "
                             "again (mark_pushed)") from None


def versions_to_retire(committed: Sequence[str], pins: ServingPins, keep: int) -> List[str]:
    """The committed versions to retire so that at most ``keep`` remain (see module docstring).

    Args:
        committed: committed versions, oldest first commit first (the last is the newest).
        pins: the store's serving pins.
        keep: versions to keep (>= 1); the protected ones are kept even beyond it.

    Returns:
        Versions to retire, in the order they should go.

    Raises:
        ValueError: ``keep`` < 1.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}: the newest commit is always kept")
    committed = list(committed)
    excess = len(committed) - int(keep)
    if excess <= 0:
        return []
    protected = set(pins.protected()) | {committed[-1]}
    blessed = set(pins.blessed)
    candidates = [v for v in committed if v not in protected]
    ordered = [v for v in candidates if v not in blessed] + [v for v in candidates if v in blessed]
    return ordered[:excess]
