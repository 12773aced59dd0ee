"""The ledger's snapshot format: what `encode` writes and `decode` reads back.

A snapshot is one compact JSON document. Format 3 (written now) adds organisations (of spend
and of groups) and keeps each model's newest use; format 2 (event identities, no
organisations) and format 1 (ids alone) still load. Encoding works on a `LedgerImage`, a copy
of the ledger taken on the event loop (`image`), so that the slow part can run in a thread.
"""

from __future__ import annotations

import base64
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final

import orjson

from services.limits.domain import DEFAULT_DEDUP_WINDOW_MS, GroupOrder, Ledger, RecentIds

__all__ = [
    "READABLE_SNAPSHOT_FORMATS",
    "SNAPSHOT_FORMAT",
    "LedgerImage",
    "decode",
    "encode",
    "image",
]

#: Format 3 adds organisations (of spend and of groups) and keeps each model's newest use;
#: format 2 (event identities, no organisations) and format 1 (ids alone) still load.
SNAPSHOT_FORMAT: Final = 3
READABLE_SNAPSHOT_FORMATS: Final = (1, 2, 3)
# Entries of a big map written per call, so that no single step holds the GIL for long.
_CHUNK: Final = 20_000


@dataclass(frozen=True, slots=True)
class LedgerImage:
    """A ledger's state at one instant, detached from the live ledger, ready to encode."""

    positions: dict[int, int]
    applied: int
    floors: list[int]
    spend: tuple[dict[int, dict[str, int]], ...]
    org_spend: tuple[dict[int, dict[str, dict[str, int]]], ...]
    user_orgs: dict[str, str]
    groups: dict[str, tuple[GroupOrder, frozenset[str]]]
    group_orgs: dict[str, str]
    models: dict[str, int]
    recent: dict[int, tuple[int, dict[int, dict[int, None]]]]

    def encode(self) -> bytes:
        """Compact JSON, built in pieces so that no single step holds the GIL for long.

        It runs in a thread beside the event loop, and the loop waits for whichever C call
        holds the GIL: big maps are therefore written in chunks.
        """
        spend = b",".join(
            b"{" + b",".join(b'"%d":' % key + _dump_map(b) for key, b in kind.items()) + b"}"
            for kind in self.spend
        )
        org_spend = b",".join(
            b"{" + b",".join(b'"%d":' % key + _dump_map(b) for key, b in kind.items()) + b"}"
            for kind in self.org_spend
        )
        group_orgs = self.group_orgs
        groups = b",".join(
            _dumps(group)
            + b":"
            + _dumps([order[0], order[1], order[2], list(members), group_orgs.get(group)])
            for group, (order, members) in self.groups.items()
        )
        recent = {
            partition: {
                "watermark_ms": watermark_ms,
                "buckets": {
                    hour: base64.b64encode(array("Q", ids).tobytes()).decode()
                    for hour, ids in buckets.items()
                },
            }
            for partition, (watermark_ms, buckets) in self.recent.items()
        }
        return b"".join(
            (
                b'{"format":%d,"applied":%d,"positions":' % (SNAPSHOT_FORMAT, self.applied),
                _dumps(self.positions),
                b',"floors":',
                _dumps(self.floors),
                b',"spend":[',
                spend,
                b'],"org_spend":[',
                org_spend,
                b'],"orgs":',
                _dump_map(self.user_orgs),
                b',"groups":{',
                groups,
                b'},"models":',
                _dumps(self.models),
                b',"recent":',
                _dumps(recent),
                b"}",
            )
        )


def image(ledger: Ledger) -> LedgerImage:
    """A copy of `ledger` consistent at this instant, cheap enough to take on the event loop.

    Only what keeps changing is copied (spend buckets, where users spent, the open hour of
    ids, the models); closed hours of ids and group member sets never change and are shared.
    Encoding the image (`LedgerImage.encode`) can then run in a thread.
    """
    return LedgerImage(
        positions=dict(ledger.positions),
        applied=ledger.applied,
        floors=list(ledger.floors),
        spend=tuple({key: bucket.copy() for key, bucket in kind.items()} for kind in ledger.spend),
        org_spend=tuple(
            {
                key: {user: dict(parts) for user, parts in bucket.items()}
                for key, bucket in kind.items()
            }
            for kind in ledger.org_spend
        ),
        user_orgs=dict(ledger.user_orgs),
        groups=dict(ledger.groups),
        group_orgs=dict(ledger.group_orgs),
        models=dict(ledger.models),
        recent={
            partition: (
                r.watermark_ms,
                {hour: ids.copy() if ids is r.open else ids for hour, ids in r.buckets.items()},
            )
            for partition, r in ledger.recent.items()
        },
    )


def encode(ledger: Ledger) -> bytes:
    """The whole ledger as a snapshot of the current format (see `decode`)."""
    return image(ledger).encode()


def decode(raw: bytes, *, dedup_window_ms: int = DEFAULT_DEDUP_WINDOW_MS) -> Ledger:
    """Rebuild a ledger from a snapshot of this or an earlier format; `ValueError` otherwise.

    Format 2 and 1 snapshots knew no organisations: their spend is spend that named none (it
    counts in every organisation, as it did when it was recorded), their groups belong to
    none until their next directory event, and each model's newest use is the newer of its
    priced and unpriced ones.
    """
    doc = orjson.loads(raw)
    if not isinstance(doc, dict) or doc.get("format") not in READABLE_SNAPSHOT_FORMATS:
        raise ValueError("unknown snapshot format")
    fmt = doc["format"]
    ledger = Ledger(dedup_window_ms=dedup_window_ms)
    ledger.positions = {int(p): int(o) for p, o in doc["positions"].items()}
    ledger.applied = int(doc["applied"])
    ledger.floors = [int(f) for f in doc["floors"]]
    ledger.spend = tuple(
        {int(key): dict(bucket) for key, bucket in kind.items()} for kind in doc["spend"]
    )
    for group, entry in doc["groups"].items():
        occurred_ms, partition, offset, members = entry[:4]
        org_id = entry[4] if len(entry) > 4 else None
        ledger.set_group(group, members, (occurred_ms, partition, offset), org_id=org_id)
    if fmt >= 3:
        ledger.models = {m: int(at) for m, at in doc["models"].items()}
        ledger.user_orgs = {str(u): str(where) for u, where in doc["orgs"].items()}
        ledger.org_spend = tuple(
            {
                int(key): {
                    user: {org: int(n) for org, n in parts.items()}
                    for user, parts in bucket.items()
                }
                for key, bucket in kind.items()
            }
            for kind in doc["org_spend"]
        )
    else:
        ledger.models = {m: max(int(u), int(p)) for m, (u, p) in doc["models"].items()}
    if fmt >= 2:
        ledger.recent = {int(p): _recent(r, dedup_window_ms) for p, r in doc["recent"].items()}
    # Format 1 remembered bare ids, which identities can never match: its spend, groups and
    # positions carry over, its ids do not.
    return ledger


def _recent(doc: Mapping[str, Any], window_ms: int) -> RecentIds:
    """A partition's remembered ids: hours of 64-bit digests, base64 of their bytes."""
    buckets: dict[int, array[int]] = {}
    for hour_text, encoded in doc["buckets"].items():
        ids = array("Q")
        ids.frombytes(base64.b64decode(encoded))
        buckets[int(hour_text)] = ids
    recent = RecentIds(window_ms)
    recent.restore(int(doc["watermark_ms"]), buckets)
    return recent


def _dump_map(mapping: Mapping[str, object]) -> bytes:
    if len(mapping) <= _CHUNK:
        return _dumps(mapping)
    items = iter(mapping.items())
    chunks = []
    while chunk := dict(islice(items, _CHUNK)):
        chunks.append(_dumps(chunk)[1:-1])
    return b"{" + b",".join(chunks) + b"}"


def _dumps(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
