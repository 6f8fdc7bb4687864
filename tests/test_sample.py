"""The demo's sample (cli/sample/), the first thing a newcomer sees: with the packaged MiniLM and the
untrained default model, as `demo` runs them, every user's first recommendations are of the
categories they are in, not of another category of the same brand."""

from __future__ import annotations

from collections import Counter

from models.encoder import ItemEncoder
from models.evaluate import StreamRecommender, build_catalogue
from models.interest import InterestModel
from models.records import CatalogueItem, Event
from streams.settings import Settings

SHOWN = 3  # the first recommendations a reader of the demo looks at
RECENT = 4  # the recent items `demo` prints beside them


def category(item_id: str) -> str:
    """The sample's item ids start with their category's first three letters (cli/sample/generate.py)."""
    return item_id[:3]


def test_every_demo_users_first_recommendations_are_of_their_categories(
    sample_catalogue, sample_events
):
    encoder = ItemEncoder()
    settings = Settings.from_env({})
    catalogue = build_catalogue(
        [CatalogueItem(i["item_id"], i["text"]) for i in sample_catalogue],
        encoder.encode([i["text"] for i in sample_catalogue]),
    )
    model = InterestModel.untrained(encoder.dim, settings.hidden_size, encoder.name)
    stream = StreamRecommender("demo", model, catalogue, settings.updater_config())
    events = [
        Event(e["event_id"], e["user_id"], e["item_id"], e["type"], e["ts"]) for e in sample_events
    ]
    for start in range(0, len(events), 64):  # micro-batches, in log order, as the worker takes them
        stream.observe(events[start : start + 64])

    users = sorted({e.user_id for e in events})
    assert len(users) == 24
    wrong = {}
    for user in users:
        touched = [e.item_id for e in events if e.user_id == user]
        # the long-term side weighs the whole history (a week's half-life), the short-term the last
        # items: the user's two main categories and those of the items the demo prints as recent
        theirs = {c for c, _ in Counter(map(category, touched)).most_common(2)}
        theirs |= {category(i) for i in touched[-RECENT:]}
        top = stream.updater.recommend([stream.states[user]])[0][:SHOWN]
        if not all(category(i.item_id) in theirs for i in top):
            wrong[user] = (sorted(theirs), [i.item_id for i in top])
    assert not wrong, wrong
