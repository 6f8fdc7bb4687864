"""Writes the bundled sample (catalogue.jsonl, events.jsonl): a small synthetic shop, reproducible by seed.

Each user prefers two categories; 80% of their events fall there. Run: python -m cli.sample.generate
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CATEGORIES = {
    "running": [
        "trail running shoes",
        "road running shoes",
        "running socks",
        "GPS running watch",
        "hydration vest",
        "running shorts",
    ],
    "coffee": [
        "espresso machine",
        "burr coffee grinder",
        "pour-over kettle",
        "single-origin coffee beans",
        "milk frother",
        "coffee scale",
    ],
    "camping": [
        "two-person tent",
        "down sleeping bag",
        "camping stove",
        "headlamp",
        "inflatable sleeping pad",
        "water filter",
    ],
    "baking": [
        "stand mixer",
        "sourdough starter kit",
        "cast iron dutch oven",
        "bread proofing basket",
        "digital kitchen scale",
        "pastry brush set",
    ],
    "gaming": [
        "mechanical keyboard",
        "gaming mouse",
        "wireless headset",
        "4k gaming monitor",
        "controller charging dock",
        "mouse pad xl",
    ],
    "gardening": [
        "pruning shears",
        "raised garden bed",
        "tomato seeds",
        "watering can",
        "compost bin",
        "garden gloves",
    ],
    "yoga": [
        "yoga mat",
        "yoga blocks",
        "meditation cushion",
        "resistance bands",
        "yoga strap",
        "foam roller",
    ],
    "photography": [
        "mirrorless camera",
        "50mm prime lens",
        "camera tripod",
        "camera bag",
        "lens cleaning kit",
        "sd memory card",
    ],
}
BRANDS = ["Northpeak", "Alder", "Vanta", "Kestrel"]


def main(
    out_dir: Path = Path(__file__).parent, users: int = 24, events_per_user: int = 30, seed: int = 7
) -> None:
    rng = random.Random(seed)
    items: list[dict] = []
    by_category: dict[str, list[str]] = {}
    for category, products in CATEGORIES.items():
        for product in products:
            for brand in BRANDS[:2]:
                item_id = f"{category[:3]}-{len(items):03d}"
                # the category in words and the brand last: MiniLM weighs a rare brand name first in a short
                # text above what the item is (a tent beside yoga mats of the same brand)
                text = f"{product} for {category}. Brand: {brand}"
                items.append({"item_id": item_id, "text": text})
                by_category.setdefault(category, []).append(item_id)
    events: list[dict] = []
    t0 = 1_793_000_000.0  # Nov 2026
    for u in range(users):
        liked = rng.sample(sorted(CATEGORIES), 2)
        ts = t0 + rng.uniform(0, 3600)
        for n in range(events_per_user):
            category = rng.choice(liked) if rng.random() < 0.8 else rng.choice(sorted(CATEGORIES))
            ts += rng.expovariate(1 / 900)
            kind = "purchase" if rng.random() < 0.15 else "click"
            item = rng.choice(by_category[category])
            events.append(
                {
                    "event_id": f"u{u:02d}-{n:03d}",
                    "user_id": f"user-{u:02d}",
                    "item_id": item,
                    "type": kind,
                    "ts": round(ts, 3),
                }
            )
    events.sort(key=lambda e: e["ts"])
    (out_dir / "catalogue.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    (out_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


if __name__ == "__main__":
    main()
