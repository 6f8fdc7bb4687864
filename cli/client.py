"""Client-side tools: publish a catalogue, produce and replay events, subscribe to recommendations,
look at a user on the worker that holds them, request a user's erasure."""

from __future__ import annotations

import enum
import json
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError

from kafka import KafkaConsumer
from tqdm import tqdm

from cli.delivery import Delivery
from models.data import read_jsonl
from models.records import Reason, Recommendation
from state.faults import InterestStreamError
from streams.connection import client_options
from streams.settings import Settings
from streams.topics import ensure_topics


def delivery(settings: Settings, what: str) -> Delivery:
    """A checked producer of ``what`` (``cli.delivery``), the topics created first."""
    ensure_topics(settings)
    return Delivery(settings, what)


def event_topic(settings: Settings, event: dict) -> str:
    kind = event.get("type", "click")
    if kind not in ("click", "purchase"):
        raise InterestStreamError(
            f"event {event.get('event_id')!r}: type must be click or purchase, not {kind!r}"
        )
    return settings.purchases_topic if kind == "purchase" else settings.clicks_topic


def send_events(
    settings: Settings,
    events: Iterable[dict],
    speed: float = 0.0,
    total: int | None = None,
    progress: bool = True,
) -> int:
    """Send events keyed by user (their partition). ``speed`` 0: as fast as possible; N: event time x N.
    Returns how many the broker acknowledged: all of them, or it raises ``NotDelivered`` saying how many
    were not, and which."""
    first_ts, started = None, time.monotonic()
    with delivery(settings, "events") as out:
        for event in tqdm(events, total=total, unit="ev", disable=not progress, desc="events"):
            if speed > 0:
                first_ts = first_ts if first_ts is not None else event["ts"]
                ahead = (event["ts"] - first_ts) / speed - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            out.send(
                event_topic(settings, event),
                str(event["user_id"]).encode(),
                json.dumps(event).encode(),
                label=f"event {event.get('event_id')!r}",
            )
    return out.done.acknowledged


def replay(settings: Settings, path: str | Path, speed: float = 0.0, progress: bool = True) -> int:
    """Replay a recorded JSON-lines log in event-time order (stable for equal times)."""
    events = sorted(read_jsonl(path), key=lambda e: e["ts"])
    return send_events(settings, events, speed, total=len(events), progress=progress)


def publish_catalogue(settings: Settings, path: str | Path, progress: bool = True) -> int:
    """Publish a catalogue file (JSON lines {item_id, text}) to the items topic; returns the items the broker
    acknowledged (all, or ``NotDelivered``)."""
    items = list(read_jsonl(path))
    with delivery(settings, "items") as out:
        for item in tqdm(items, unit="item", disable=not progress, desc="catalogue"):
            out.send(
                settings.items_topic,
                str(item["item_id"]).encode(),
                json.dumps(item).encode(),
                label=f"item {item['item_id']!r}",
            )
    return out.done.acknowledged


def request_erasure(settings: Settings, users: list[str]) -> dict[str, tuple[str, int]]:
    """Ask the workers to erase ``users`` (``streams.erasure``): a request keyed by user id, so it reaches
    the worker that holds the user, in order with their events. Returns where each request went (source
    "topic:partition", offset); raises ``NotDelivered`` if the broker did not acknowledge a request."""
    sent = {}
    with delivery(settings, "erasure requests") as out:
        for user in users:
            request = json.dumps({"user_id": user, "requested_at": time.time()}).encode()
            sent[user] = out.send(
                settings.erasures_topic, user.encode(), request, label=f"user {user!r}"
            )
    return {
        user: (f"{meta.topic}:{meta.partition}", meta.offset)
        for user, future in sent.items()
        if (meta := future.get())
    }


def inspect_user(settings: Settings, user: str) -> dict | None:
    """The user's state and latest recommendations as a worker shows them (``streams.web.user_view``);
    None if no worker holds a state for them (never seen, or erased)."""
    base = settings.worker_url.rstrip("/") or f"http://127.0.0.1:{settings.web_port}"
    url = f"{base}/users/{urllib.parse.quote(user, safe='')}"
    headers = {"Authorization": f"Bearer {settings.web_token}"} if settings.web_token else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=10
        ) as response:
            return json.loads(response.read())
    except HTTPError as exc:
        if exc.code == 404:
            return None
        if exc.code in (401, 403):
            raise InterestStreamError(f"{url}: {exc.code}: {_error_of(exc)}") from None
        raise InterestStreamError(
            f"{url}: {exc.code} {exc.reason} (503: the workers are still being assigned partitions)"
        ) from None
    except (URLError, OSError) as exc:
        raise InterestStreamError(
            f"no worker answers at {base} ({getattr(exc, 'reason', exc)}); set INTEREST_WORKER_URL"
        ) from None


def _error_of(exc: HTTPError) -> str:
    try:
        return json.loads(exc.read())["error"]
    except (ValueError, KeyError, TypeError, OSError):
        return str(exc.reason)


class Erasure(enum.Enum):
    ERASED = "erased"  # no worker holds a state for the user
    MADE_AGAIN = "made again"  # the request was applied, and events after it made the user again
    PENDING = "pending"  # not applied yet


def erasure_of(view: dict | None, request: tuple[str, int]) -> Erasure:
    """Where an erasure ``request`` (source, offset) stands, from the user's page (None: no state)."""
    if view is None:
        return Erasure.ERASED
    source, offset = request
    return (
        Erasure.MADE_AGAIN if view["applied_offsets"].get(source, -1) >= offset else Erasure.PENDING
    )


def wait_erased(
    settings: Settings, requests: dict[str, tuple[str, int]], timeout_s: float
) -> dict[str, Erasure]:
    """Wait until every request of ``request_erasure`` is applied (at most ``timeout_s``); returns where each
    user stands: erased, made again by later events, or still pending."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = {
            user: erasure_of(inspect_user(settings, user), request)
            for user, request in requests.items()
        }
        if Erasure.PENDING not in state.values() or time.monotonic() >= deadline:
            return state
        time.sleep(0.5)


def format_user(view: dict) -> str:
    last, lt, latest = view["last_event"], view["long_term"], view["latest_recommendations"]
    recs = ", ".join(f"{i['item_id']} ({i['score']:.3f})" for i in latest["items"]) or "none"
    return "\n".join(
        (
            f"user {view['user_id']} (partition {view['partition']}, model {view['model_version']})",
            f"  events: {view['clicks']} clicks, {view['purchases']} purchases; last "
            f"{last['event_id']} at {_when(last['ts'])}",
            f"  recent items (newest first): {', '.join(view['recent_items'][:10]) or 'none'}",
            f"  long-term: weight {lt['weight']:.3f} as of {_when(lt['as_of'])} "
            f"({lt['age_s'] / 3600:.1f} h ago)",
            f"  latest recommendations ({_when(latest['produced_at'])}): {recs}",
        )
    )


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC" if ts else "never"


@dataclass(frozen=True)
class Erased:
    """A null on the recommendations topic: the user was erased (``interest-stream erase`` or expiry)."""

    user_id: str


def recommendations(
    settings: Settings, from_beginning: bool = False, timeout_s: float | None = None
) -> Iterator[Recommendation | Erased]:
    """Recommendations and erasures as they arrive; stops after ``timeout_s`` without one (never, if
    None). A record that is not a recommendation (another producer's) is skipped with a line on stderr."""
    ensure_topics(settings)
    consumer = KafkaConsumer(
        settings.recommendations_topic,
        **client_options(settings),
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        consumer_timeout_ms=int(timeout_s * 1000) if timeout_s is not None else float("inf"),
    )
    try:
        for message in consumer:
            if message.value is None:
                if message.key:
                    yield Erased(message.key.decode(errors="replace"))
                continue
            try:
                rec = Recommendation.from_json(message.value)
            except ValueError as exc:
                print(
                    f"skipped {message.topic}:{message.partition}:{message.offset}: {str(exc)[:200]}",
                    file=sys.stderr,
                )
                continue
            yield rec
    finally:
        consumer.close()


def format_recommendation(rec: Recommendation, titles: dict[str, str] | None = None) -> str:
    """One line, `user U after E [model]: item (score), ...`; items with reasons a line each,
    `  item 0.830  (near 17 0.91 · short 0.48 / long 0.31 / item 0.21)`: the nearest recent item
    and its cosine, then
    each score part's share, with a minus for a part that lowered the score. ``titles``: item id ->
    what to print for it."""

    def name(item_id: str) -> str:
        return titles.get(item_id, item_id) if titles else item_id

    head = f"user {rec.user_id} after {rec.event_id} [{rec.model_version}]:"
    if all(i.reason is None for i in rec.items):
        return f"{head} " + ", ".join(f"{name(i.item_id)} ({i.score:.3f})" for i in rec.items)
    return "\n".join(
        [
            head,
            *(
                f"  {name(i.item_id)} {i.score:.3f}"
                + (f"  ({_why(i.reason, name)})" if i.reason else "")
                for i in rec.items
            ),
        ]
    )


def _why(reason: Reason, name: Callable[[str], str]) -> str:
    near = (
        f"near {name(reason.nearest)} {reason.similarity:.2f}"
        if reason.nearest is not None
        else "no other recent item"
    )
    # a share is |part| / sum |parts|: the sign says which way the part moved the score
    return f"{near} · " + " / ".join(
        f"{part} {'-' if reason.parts[part] < 0 else ''}{share:.2f}"
        for part, share in reason.shares().items()
    )
