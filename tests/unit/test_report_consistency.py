"""What a lab relies on between requests: a repeated upload finds its stored (reviewed) report even when
the cache was lost, 'latest' never lags behind another replica's review, a report names exactly the models
that made it while another request meets an upgrade, and a review never drops the APL alert silently.

The gateway's pipeline and a real report store (SQLite file, migrated); the two services are stand-ins
that count their calls."""

from __future__ import annotations

import asyncio

from gateway.cache import MemoryCache
from gateway.pipeline import PatientClassifier
from gateway.store.database import make_engine, migrate
from gateway.store.repository import ReportStore
from shared.schemas import ReviewRequest
from tests.helpers.database import open_database

APL_HEAD_X = {"name": "aml-apl-cell-head", "version": "1.0.0", "sha256": "1" * 64}
APL_HEAD_Y = {"name": "aml-apl-cell-head", "version": "2.0.0", "sha256": "2" * 64}
CELL_X = {"name": "aml-cell-resnet", "version": "2.3.0", "sha256": "x" * 64, "apl_head": APL_HEAD_X}
CELL_Y = {"name": "aml-cell-resnet", "version": "2.4.0", "sha256": "y" * 64, "apl_head": APL_HEAD_Y}
SUBTYPE = {"name": "aml-subtype", "version": "2.1.1", "sha256": "s" * 64}
APL_PATIENT = {"name": "aml-apl-alert", "version": "1.3.0", "sha256": "p" * 64}
LABELS = ["neutrophil", "lymphocyte", "blast", "monocyte"]


class Cells:
    """The cell service: labels by the image's first byte; ``card`` is the model it runs now."""

    def __init__(self, card=CELL_X):
        self.card = card
        self.calls = 0

    async def model(self):
        return dict(self.card)

    async def classify(self, images, request_id):
        self.calls += 1
        return {"model": dict(self.card),
                "results": [{"filename": name, "label": LABELS[data[0] % len(LABELS)], "confidence": 0.9,
                             "appearance_distance": 1.0, "apl_logit": 0.25} for name, data in images]}


class Subtype:
    """The subtype service; ``apl`` False: it gives no APL assessment (e.g. its APL model now expects
    another cell head); ``hold``: requests with this id wait until ``release`` is set."""

    def __init__(self):
        self.apl = True
        self.hold: str | None = None
        self.release = asyncio.Event()
        self.heads: list[str | None] = []

    async def model(self):
        return {**SUBTYPE, "apl": APL_PATIENT}

    async def predict(self, body, request_id):
        self.heads.append(body.get("apl_cell_head_sha256"))
        if request_id == self.hold:
            await self.release.wait()
        apl = {"probability": 0.8, "alert": True, "threshold": 0.2, "model": APL_PATIENT} if self.apl else None
        return {"model": SUBTYPE, "aml_probability": 0.9, "prediction": "PML_RARA",
                "probabilities": {"control": 0.1, "PML_RARA": 0.9}, "apl": apl, "warnings": []}


def images(n: int, offset: int = 0) -> list[tuple[str, bytes]]:
    return [(f"c{i}.jpg", bytes([i % 256, (i + offset) % 256, 7])) for i in range(n)]


def with_store(tmp_path, test):
    """Run ``test(store)`` against a migrated SQLite report store."""
    db, cleanup = open_database("sqlite", tmp_path)

    async def main():
        engine = make_engine(db.settings())
        await migrate(engine, db.schema)
        store = ReportStore(engine)
        try:
            await test(store)
        finally:
            await store.close()

    try:
        asyncio.run(main())
    finally:
        cleanup()


def pipeline(store, cells=None, subtype=None) -> PatientClassifier:
    """One gateway (replica) with its own in-process cache."""
    return PatientClassifier(MemoryCache(3600), cells or Cells(), subtype or Subtype(), chunk_size=4,
                             chunk_concurrency=2, store=store)


async def sign_off(gateway: PatientClassifier, store: ReportStore, report_id: str, **review):
    base = await store.get(report_id)
    request = ReviewRequest(reviewer="Dr. A", sign_off=True, **review)
    return await gateway.store_review(base, await gateway.review(base, request, "review"), request, "key-1")


def test_the_same_upload_after_a_lost_cache_answers_the_signed_off_version(tmp_path):
    async def test(store):
        first = await pipeline(store).classify("P-1", images(6), "r1")
        final = await sign_off(pipeline(store), store, first.report_id)
        assert final.status == "final" and final.first_report_id == first.report_id == first.first_report_id

        restarted = pipeline(store)  # a restart: the in-process cache is empty, the database kept everything
        again = await restarted.classify("P-1", images(6), "r2")
        assert again.report_id == final.report_id and again.status == "final" and again.cached is True
        assert restarted.cells.calls == 0, "a repeated upload is not classified again"
        assert (await store.latest("P-1")).report_id == final.report_id, "the signed-off version stays the latest"
        assert [r.id for r in await store.list("P-1")] == [final.report_id, first.report_id]

        other = await restarted.classify("P-1", images(6, offset=1), "r3")  # other images: a new report
        assert other.version == 1 and other.cached is False and other.first_report_id == other.report_id

    with_store(tmp_path, test)


def test_latest_follows_a_review_made_through_another_replica(tmp_path):
    async def test(store):
        a, b = pipeline(store), pipeline(store)  # two replicas, each with its own cache
        first = await a.classify("P-2", images(5), "r1")
        assert (await b.latest("P-2")).report_id == first.report_id
        final = await sign_off(a, store, first.report_id)
        seen = await b.latest("P-2")
        assert seen.report_id == final.report_id and seen.status == "final"

    with_store(tmp_path, test)


def test_a_report_names_the_models_that_made_it_while_another_request_meets_an_upgrade(tmp_path):
    async def test(store):
        cells, subtype = Cells(CELL_X), Subtype()
        gateway = pipeline(store, cells, subtype)
        await gateway.classify("P-warm", images(4), "warm")  # the cells are now cached under model X
        subtype.hold = "A"
        a = asyncio.create_task(gateway.classify("P-A", images(4), "A"))  # cells from the cache, waits in subtype
        while len(subtype.heads) < 2:
            await asyncio.sleep(0.01)
        cells.card = CELL_Y  # a rolling upgrade
        gateway._models_checked = float("-inf")  # as if the re-check interval had passed
        b = await gateway.classify("P-B", images(2, offset=9), "B")
        subtype.release.set()
        report_a = await a
        assert report_a.models.cell["sha256"] == CELL_X["sha256"], "A's cells came from model X"
        assert report_a.models.apl_cell_head["sha256"] == APL_HEAD_X["sha256"]
        assert subtype.heads[1] == APL_HEAD_X["sha256"], "the subtype service got the head of A's logits"
        assert b.models.cell["sha256"] == CELL_Y["sha256"]
        assert b.models.apl_cell_head["sha256"] == APL_HEAD_Y["sha256"]

    with_store(tmp_path, test)


def test_a_review_keeps_the_apl_alert_when_the_subtype_service_cannot_assess_it(tmp_path):
    async def test(store):
        subtype = Subtype()
        gateway = pipeline(store, subtype=subtype)
        first = await gateway.classify("P-apl", images(6), "r1")
        assert first.apl_alert is True
        subtype.apl = False  # e.g. the APL model was upgraded and expects another cell head
        reviewed = await sign_off(gateway, store, first.report_id)
        assert reviewed.apl_alert is True and reviewed.apl_probability == first.apl_probability
        assert reviewed.apl_top_cells == first.apl_top_cells
        assert any("APL assessment could not be recomputed" in w for w in reviewed.warnings)

    with_store(tmp_path, test)
