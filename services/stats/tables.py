"""How the stats tables store the core's values: plain dicts, which faust writes to the changelogs as JSON.

The keys are a storage format: a worker recovers its tables from changelogs that older workers
wrote, so renaming a key loses that state, and a reader tolerates missing keys (a value stored
before the key existed). A bucket's keys are short: every counted event rewrites one.
The app adds its own bookkeeping keys (``o``, the offset applied last; ``partition``) next to these.
"""

from __future__ import annotations

from typing import Any

from waitroom_core.thresholds import AlertState, OpenAlert
from waitroom_core.windows import Bucket, Gauges

TableValue = dict[str, Any]


def bucket_to_table(bucket: Bucket) -> TableValue:
    return {
        "j": bucket.joins,
        "a": bucket.admissions,
        "l": bucket.leaves,
        "ew": bucket.expiries_waiting,
        "ea": bucket.expiries_admitted,
        "w": list(bucket.waits),
        "af": bucket.first_admission_at,
        "al": bucket.last_admission_at,
    }


def bucket_from_table(data: TableValue | None) -> Bucket:
    if not data:
        return Bucket()
    return Bucket(
        joins=int(data.get("j", 0)),
        admissions=int(data.get("a", 0)),
        leaves=int(data.get("l", 0)),
        expiries_waiting=int(data.get("ew", 0)),
        expiries_admitted=int(data.get("ea", 0)),
        waits=tuple(float(w) for w in data.get("w", ())),
        first_admission_at=data.get("af"),
        last_admission_at=data.get("al"),
    )


def gauges_to_table(gauges: Gauges) -> TableValue:
    return {
        "capacity": gauges.capacity,
        "paused": gauges.paused,
        "active": gauges.active,
        "waiting": gauges.waiting,
        "configured": gauges.configured,
        "last_admission_at": gauges.last_admission_at,
        "observed_since": gauges.observed_since,
        "last_event_at": gauges.last_event_at,
    }


def gauges_from_table(data: TableValue | None) -> Gauges:
    if not data:
        return Gauges()
    return Gauges(
        capacity=int(data.get("capacity", 0)),
        paused=bool(data.get("paused", False)),
        active=int(data.get("active", 0)),
        waiting=int(data.get("waiting", 0)),
        configured=bool(data.get("configured", False)),
        last_admission_at=data.get("last_admission_at"),
        observed_since=data.get("observed_since"),
        last_event_at=data.get("last_event_at"),
    )


def alert_state_to_table(state: AlertState) -> TableValue:
    return {
        "open": {rule: [alert.alert_id, alert.breached_at] for rule, alert in sorted(state.open.items())},
        "waiting_since": state.waiting_since,
    }


def alert_state_from_table(data: TableValue | None) -> AlertState:
    if not data:
        return AlertState()
    opened = {rule: OpenAlert(str(v[0]), float(v[1])) for rule, v in (data.get("open") or {}).items()}
    return AlertState(open=opened, waiting_since=data.get("waiting_since"))
