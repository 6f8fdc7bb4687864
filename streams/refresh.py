"""Which users a decay tick's pass checks for a long-term refresh (``streams.decay``), per partition.

Everyone on a partition's first pass: after the worker started, and after every rebalance (``forget``),
since what changed meanwhile is unknown and another worker, perhaps with another encoder, may have
written its users. After that, only the users who touched an item whose vector came, changed or went
since that partition's last completed pass (``Catalogue.changed_items_since``), and no one, at no cost
beyond the decay scan, while none did. Used in the model thread only, where the catalogue changes.
"""

from __future__ import annotations

from models.catalogue import Catalogue
from streams.decay import RefreshScope


class RefreshPasses:
    def __init__(self) -> None:
        # partition -> catalogue version its last completed pass started at
        self._seen: dict[int, int] = {}

    def scope(self, partition: int, catalogue: Catalogue) -> RefreshScope:
        seen = self._seen.get(partition)
        return RefreshScope(
            catalogue.version, None if seen is None else catalogue.changed_items_since(seen)
        )

    def done(self, partition: int, scope: RefreshScope, catalogue: Catalogue) -> None:
        """``partition``'s pass over ``scope`` completed: its next one looks at what changed after it
        started. Changes every partition has seen are forgotten; a partition not seen yet gets a full
        pass anyway."""
        self._seen[partition] = scope.version
        catalogue.forget_changes(min(self._seen.values()))

    def forget(self) -> None:
        """The partitions moved: every partition's next pass checks everyone."""
        self._seen.clear()
