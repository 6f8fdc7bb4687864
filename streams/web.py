"""The worker's web port: /health (alive) and /ready (catalogue caught up, events being applied).
faust's own views are switched off in the app's settings (``streams.app``)."""

from __future__ import annotations

import faust

from streams.runtime import Runtime


def add_pages(app: faust.App, runtime: Runtime) -> None:
    @app.page("/health")
    async def health(self, request):
        return self.json({"status": "ok"})

    @app.page("/ready")
    async def ready(self, request):
        ok = runtime.ready.is_set()
        return self.json({"ready": ok, "catalogue_items": len(runtime.updater.catalogue) if ok else 0}, status=200 if ok else 503)
