"""Why an event was refused, as one stable code decided where the refusal happens.

Ingest answers each rejected event with its code (`reason` in the rejected entries) and counts
it in `tollgate_ingest_events_total{reason}`; the consumers label their dead letters
(`tollgate_consumer_dlq_total{reason}`, header `reason_code`) with the same codes. The human
message beside it names the field; the code is what dashboards, alerts and clients match on.
"""

from __future__ import annotations

from enum import StrEnum


class RejectReason(StrEnum):
    """A refused event's reason code; new codes may be added, existing ones never change."""

    #: A log record without a value (a tombstone).
    NO_VALUE = "no_value"
    #: A log record whose bytes are not UTF-8.
    INVALID_UTF8 = "invalid_utf8"
    #: A log record that is not JSON.
    INVALID_JSON = "invalid_json"
    #: JSON that is not an object.
    NOT_AN_OBJECT = "not_an_object"
    #: A string no event can carry: a control character or a lone surrogate
    #: (`libs.events.bounds`).
    UNSTORABLE_TEXT = "unstorable_text"
    #: An old event type whose upcaster failed on it.
    NOT_UPGRADABLE = "not_upgradable"
    #: A `type` no model knows.
    UNKNOWN_TYPE = "unknown_type"
    #: A field fails its model: missing, the wrong type, out of its bounds, or unknown.
    INVALID = "invalid"
    #: `occurred_at` further in the future than ingest's allowed clock skew.
    FUTURE = "future"
    #: The same event (type, subject and id) twice in one batch.
    DUPLICATE_IN_BATCH = "duplicate_in_batch"
    #: Chat usage whose priced cost exceeds the per-event cap.
    COST_TOO_HIGH = "cost_too_high"
    #: An event that cannot be written to the log.
    UNENCODABLE = "unencodable"
    #: A decodable event a consumer's store refused.
    REFUSED = "refused"
