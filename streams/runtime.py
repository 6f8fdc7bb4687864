"""What the agents share: model, catalogue, item store and the two threads model work runs in, loaded
once at worker start (the encoder takes seconds), never on the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import torch

from models.catalogue import Catalogue
from models.encoder import ItemEncoder
from models.interest import InterestModel
from models.trending import Trending
from models.updater import InterestUpdater
from state.faults import InterestStreamError
from state.item_store import ItemStore
from streams import metrics
from streams.ingest import EventStep
from streams.settings import Settings, stream_settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings, event_types: dict[str, str]) -> None:
        self.settings = settings
        self.event_types = event_types  # topic -> event type
        # updater, catalogue: one writer
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")
        # long refreshes run beside events
        self.encoder_thread = ThreadPoolExecutor(1, thread_name_prefix="encoder")
        self.ready = asyncio.Event()  # the catalogue has caught up: events may be applied
        self.watermarks: dict[int, float] = {}  # partition -> newest event time applied there
        # (topic, partition) -> last offset, its timestamp
        self.positions: dict[tuple[str, int], tuple[int, float]] = {}
        self.encoder: ItemEncoder
        self.store: ItemStore
        self.updater: InterestUpdater
        self.events: EventStep
        self._trending_saved = -float("inf")  # monotonic time of the last ``save_trending``

    def load(self) -> None:
        """Load the encoder, the model (the checkpoint's, or the untrained default) and the item store."""
        s = self.settings
        if s.torch_threads > 0:
            # process-wide: GRU, scoring and the item encoder
            torch.set_num_threads(s.torch_threads)
        self.encoder = ItemEncoder(
            s.encoder_path, s.encoder_device, s.encoder_batch, s.encoder_max_tokens
        )
        if s.checkpoint:
            model = InterestModel.load(Path(s.checkpoint))
            if (model.config.encoder, model.config.embed_dim) != (
                self.encoder.name,
                self.encoder.dim,
            ):
                # another encoder's vectors would be silently meaningless to this GRU and item tower
                raise InterestStreamError(
                    f"checkpoint was trained on {model.config.encoder} ({model.config.embed_dim}-d); "
                    f"this worker's encoder is {self.encoder.name} ({self.encoder.dim}-d)"
                )
            if trained := model.config.stream_mismatch(s):
                log.warning(
                    "checkpoint %s was trained with %s: this worker's other values feed it "
                    "long-term averages and re-buy "
                    "weights of another scale than it learned",
                    s.checkpoint,
                    stream_settings(trained),
                )
            if model.config.rebuys and s.exclude_seen:
                log.warning(
                    "checkpoint %s was trained with re-buys as candidates, but "
                    "INTEREST_EXCLUDE_SEEN=true drops the user's "
                    "recent items: set INTEREST_EXCLUDE_SEEN=false to serve what it learned",
                    s.checkpoint,
                )
        else:
            model = InterestModel.untrained(self.encoder.dim, s.hidden_size, self.encoder.name)
        self.store = ItemStore(s.data_dir / "items")
        source = f"{s.item_vectors_topic} {self.encoder.space}"
        if self.store.source() != source:
            # Another topic's offsets, or another encoder's vectors (docs/refresh.md, Rolling out a
            # new encoder): read
            # the topic again from its start, keeping this encoder's vectors only.
            log.info(
                "item store was filled from %s; read again from %s",
                self.store.source() or "an unnamed source",
                source,
            )
            self.store.reset(source)
        catalogue = Catalogue(self.encoder.dim, self.encoder.space)
        catalogue.upsert(list(self.store))
        self.updater = InterestUpdater(model, catalogue, s.updater_config())
        self._restore_trending()
        self.events = EventStep(self.updater, self.event_types, s.limits(), s.max_message_bytes)  # type: ignore[arg-type]
        metrics.MODEL_INFO.labels(model.version, self.encoder.name, self.encoder.device.type).set(1)
        metrics.CATALOGUE_ITEMS.set(len(catalogue))
        log.info(
            "model %s; encoder %s on %s (%s, batches of %d)",
            model.version,
            self.encoder.name,
            self.encoder.device,
            self.encoder.model.dtype,
            self.encoder.batch_size,
        )

    def _restore_trending(self) -> None:
        """The trend counts the last run saved (``save_trending``), if the model has a trend term
        of the same half-life."""
        raw = self.store.trending()
        if self.updater.trending is None or raw is None:
            return
        try:
            saved = Trending.from_bytes(raw)
        except ValueError as exc:  # a damaged record costs the recent popularity, not the start
            log.warning("saved trend counts ignored: %s", exc)
            return
        if saved.half_life_s == self.updater.trending.half_life_s:
            self.updater.trending = saved
            log.info("trend counts of %d items restored", len(saved.counts))

    def save_trending(self) -> None:
        """Save the trend counts in the item store, once a decay interval however many partitions
        pass (call in
        the model thread: the updater's writer)."""
        if (
            self.updater.trending is not None
            and time.monotonic() - self._trending_saved >= self.settings.decay_interval_s / 2
        ):
            self.store.save_trending(self.updater.trending.to_bytes())
            self._trending_saved = time.monotonic()

    def close(self) -> None:
        """Let the model and encoder threads finish the job they run (queued ones are dropped:
        nothing will read
        their results), then close the item store. Call once the app has stopped."""
        self.model_thread.shutdown(cancel_futures=True)
        self.encoder_thread.shutdown(cancel_futures=True)
        if hasattr(self, "store"):  # not before ``load``
            self.store.close()

    async def in_model_thread(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    async def in_encoder_thread(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.encoder_thread, fn, *args)

    def mark_ready(self) -> None:
        self.ready.set()
        metrics.READY.set(1)
