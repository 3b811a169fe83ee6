"""The server's heap after startup: frozen, so full garbage collections under load do not scan
the modules, app and models that live as long as the process."""

from __future__ import annotations

import gc
from pathlib import Path

from taskplatform.api.app import create_app
from taskplatform.settings import Settings


async def test_the_startup_heap_is_frozen_while_the_app_runs(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'tp.db'}"))
    gc.unfreeze()
    async with app.router.lifespan_context(app):
        frozen = gc.get_freeze_count()
        # What a full collection scans now is what was made since startup, not the startup heap.
        assert frozen > 50_000
        assert len(gc.get_objects(generation=2)) < frozen / 10
    assert gc.get_freeze_count() == 0  # a process that builds many apps keeps none of them
