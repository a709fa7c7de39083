"""The report store on SQLite and PostgreSQL (the same tests): migrations from empty, versions,
concurrent reviews, thumbnails, erasure, an unreachable database."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import inspect

from gateway.store.database import current_revision, downgrade, make_engine, migrate
from gateway.store.repository import ReportStore, StaleVersion, StoreUnavailable, Thumbnail
from gateway.thumbnails import MAX_BYTES, MAX_SIDE, make_thumbnail
from tests.helpers.images import fullsize_images
from tests.helpers.processes import refused_port
from tests.helpers.reports import sample_report

TABLES = {"reports", "report_images", "thumbnails", "reviews", "alembic_version"}


def run(coroutine):
    return asyncio.run(coroutine)


async def _tables(engine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


@asynccontextmanager
async def migrated_store(database):
    """A ReportStore over ``database`` migrated to the newest revision, closed afterwards."""
    engine = make_engine(database.settings())
    await migrate(engine, database.schema)
    store = ReportStore(engine)
    try:
        yield store
    finally:
        await store.close()


def thumbs(report) -> list[Thumbnail]:
    return [Thumbnail(c.sha256, b"\xff\xd8jpeg-" + c.sha256.encode()[:8], 10, 10) for c in report.cells]


def test_migrations_from_empty_and_back(database):
    async def main():
        engine = make_engine(database.settings())
        try:
            assert not (await _tables(engine)) & TABLES
            await migrate(engine, database.schema)
            assert await current_revision(engine) == "0004"
            assert TABLES <= await _tables(engine)
            await migrate(engine, database.schema)  # idempotent
            await downgrade(engine, "base")
            assert (await _tables(engine)) & TABLES <= {"alembic_version"}
            await migrate(engine, database.schema)
            assert await current_revision(engine) == "0004"
        finally:
            await engine.dispose()

    run(main())


async def _row_counts(engine) -> dict[str, int]:
    from sqlalchemy import text

    async with engine.connect() as conn:
        return {table: (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
                for table in ("reports", "reviews", "report_images", "thumbnails")}


@pytest.mark.parametrize("revision", ["0003", "0001"])
def test_a_downgrade_keeps_every_report_review_and_link(database, revision):
    """Downgrading drops what a revision added, nothing else: on SQLite a table rebuilt to drop a column would
    cascade its DROP into every review, review version and thumbnail link (foreign keys are on)."""
    async def main():
        engine = make_engine(database.settings())
        await migrate(engine, database.schema)
        store = ReportStore(engine)
        try:
            first = await store.add_report(sample_report("P-down"), "k", {}, thumbs(sample_report("P-down")),
                                           images_key="imgs")
            await store.add_review(await store.get(first.report_id), first.model_copy(update={"status": "final"}),
                                   "Dr A", "kept", True, [])
            before = await _row_counts(engine)
            assert before == {"reports": 2, "reviews": 1, "report_images": 32, "thumbnails": 16}
            await downgrade(engine, revision)
            assert await current_revision(engine) == revision
            assert await _row_counts(engine) == before
            await migrate(engine, database.schema)
            assert await _row_counts(engine) == before
            assert (await store.latest("P-down")).status == "final"
        finally:
            await store.close()

    run(main())


def test_versions_latest_list_and_concurrent_reviews(database):
    async def main():
        async with migrated_store(database) as store:
            first = await store.add_report(sample_report("P-1"), "k1", {}, thumbs(sample_report("P-1")))
            assert first.report_id and first.version == 1 and first.status == "preliminary"
            assert (await store.latest("P-1")) == first
            base = await store.get(first.report_id)
            assert base.report == first and base.superseded_by is None and base.content_key == "k1"

            draft = first.model_copy(update={"status": "final"})
            results = await asyncio.gather(
                store.add_review(base, draft, "Dr A", "", True, []),
                store.add_review(base, draft, "Dr B", "", True, []), return_exceptions=True)
            won = [r for r in results if not isinstance(r, Exception)]
            lost = [r for r in results if isinstance(r, Exception)]
            assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], StaleVersion), results
            second = won[0]
            assert second.version == 2 and second.supersedes == first.report_id and second.reviewed_by in ("Dr A", "Dr B")
            assert lost[0].newer == second.report_id
            with pytest.raises(StaleVersion):
                await store.add_review(await store.get(first.report_id), draft, "Dr C", "", True, [])

            assert (await store.latest("P-1")) == second
            assert (await store.get(first.report_id)).report == first, "a version never changes"
            listed = await store.list("P-1")
            assert [r.id for r in listed] == [second.report_id, first.report_id]
            assert listed[1].superseded_by == second.report_id and listed[0].status == "final"
            sha = first.cells[0].sha256
            assert (await store.thumbnail_of_patient(second.report_id, sha))[0].startswith(b"\xff\xd8")
            assert await store.thumbnail_of_patient(second.report_id, "0" * 64) is None
            assert [h.report.report_id for h in await store.reviewed_heads()] == [second.report_id]

    run(main())


def test_erasure_keeps_what_other_patients_share(database):
    async def main():
        async with migrated_store(database) as store:
            mine = sample_report("P-gone")
            shared_cell = mine.cells[0]
            other = sample_report("P-stays", salt="x")
            other = other.model_copy(update={"cells": [shared_cell] + other.cells[1:]})
            kept = await store.add_report(other, "k2", {}, thumbs(other))
            gone = await store.add_report(mine, "k1", {}, thumbs(mine))
            base = await store.get(gone.report_id)
            await store.add_review(base, gone.model_copy(update={"status": "final"}), "Dr A", "c", True, [])
            erased = await store.erase("P-gone")
            assert erased.reports == 2 and erased.thumbnails == len(mine.cells) - 1
            assert shared_cell.sha256 in erased.sha256s and erased.content_keys == ["k1"]
            assert await store.latest("P-gone") is None and await store.list("P-gone") == []
            assert await store.get(gone.report_id) is None
            assert await store.thumbnail_of_patient(kept.report_id, shared_cell.sha256) is not None
            assert (await store.erase("P-gone")).reports == 0

    run(main())


def test_unreachable_database_is_store_unavailable(database):
    if database.kind != "postgresql":
        pytest.skip("a file database cannot be unreachable")
    with refused_port() as port:
        _unreachable_database_is_store_unavailable(database.settings(
            database_url=f"postgresql://postgres@127.0.0.1:{port}/test", database_timeout_s=1.0))


def _unreachable_database_is_store_unavailable(dead):
    async def main():
        store = ReportStore(make_engine(dead))
        try:
            assert await store.ping() is False
            with pytest.raises(StoreUnavailable):
                await store.add_report(sample_report(), "k", {}, [])
            with pytest.raises(StoreUnavailable):
                await store.latest("P-1")
        finally:
            await store.close()

    run(main())


def test_thumbnail_is_bounded():
    _, path = fullsize_images()[0]
    thumbnail = make_thumbnail("f" * 64, path.read_bytes())
    assert thumbnail is not None and max(thumbnail.width, thumbnail.height) <= MAX_SIDE
    assert len(thumbnail.jpeg) <= MAX_BYTES and thumbnail.jpeg[:2] == b"\xff\xd8"
    assert make_thumbnail("f" * 64, b"not an image") is None


def test_replicas_migrating_at_once(database):
    """Several gateways starting together on one empty database: all succeed, one schema."""
    async def main():
        engines = [make_engine(database.settings()) for _ in range(3)]
        try:
            await asyncio.gather(*(migrate(e, database.schema) for e in engines))
            assert {await current_revision(e) for e in engines} == {"0004"}
        finally:
            for e in engines:
                await e.dispose()

    run(main())


def test_migrate_command(tmp_path):
    import os
    import subprocess
    import sys

    from tests.helpers.processes import REPO_ROOT

    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'cmd.db'}"}
    current = subprocess.run([sys.executable, "-m", "gateway.store", "current"], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert current.returncode == 0 and "revision None" in current.stdout
    migrated = subprocess.run([sys.executable, "-m", "gateway.store", "migrate"], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
    assert migrated.returncode == 0, migrated.stderr
    assert "sqlite: schema revision 0004" in migrated.stdout


def test_upgrade_from_0001_keeps_the_reports(database):
    """A database made by an earlier gateway (revision 0001) is upgraded in place: its reports and reviews
    stay, a repeated upload finds them, and new reviews record their API key."""
    async def main():
        from sqlalchemy import select

        from gateway.store.models import ReviewRow

        engine = make_engine(database.settings())
        await migrate(engine, database.schema, revision="0001")
        store = ReportStore(engine)
        try:
            old = await store.add_report(sample_report("P-old"), "k-old", {}, thumbs(sample_report("P-old")))
            await migrate(engine, database.schema)
            assert await current_revision(engine) == "0004"
            assert (await store.latest("P-old")) == old
            assert (await store.for_content("P-old", "k-old")) == old and await store.for_content("P-old", "k") is None
            base = await store.get(old.report_id)
            reviewed = await store.add_review(base, old.model_copy(update={"status": "final"}), "Dr A", "", True, [],
                                              key_id="lab-1")
            assert reviewed.first_report_id == old.report_id
            assert (await store.for_content("P-old", "k-old")) == reviewed, "the newest version of the content"
            async with engine.connect() as conn:
                assert (await conn.execute(select(ReviewRow.key_id))).scalars().all() == ["lab-1"]
        finally:
            await store.close()

    run(main())


def test_concurrent_reports_of_one_patient_all_stored(database):
    """A LIS sending several uploads of one patient at once: every report is stored, none answers 503."""
    async def main():
        async with migrated_store(database) as store:
            reports = await asyncio.gather(*(store.add_report(sample_report("P-busy", salt=str(i)), f"k{i}", {}, [])
                                             for i in range(12)))
            listed = await store.list("P-busy")
            assert len(listed) == 12 and {r.id for r in listed} == {r.report_id for r in reports}

    run(main())


SUBTYPE_A = {"name": "subtype", "version": "2.0.0", "sha256": "b" * 64, "rules_sha256": "1" * 64}
SUBTYPE_B = {"name": "subtype", "version": "2.1.0", "sha256": "c" * 64, "rules_sha256": "2" * 64}


def with_subtype(report, subtype: dict):
    return report.model_copy(update={"models": report.models.model_copy(update={"subtype": subtype})})


def test_a_review_under_an_upgraded_subtype_model_is_found_by_a_repeated_upload(database):
    """Version 1 by subtype A, reviewed after the subtype service became B (the review names B): the same images
    sent again under B answer the reviewed version, never a new preliminary report; under A, nothing answers
    (the chain's newest version is B's); a model's rules changed with the same file are another model."""
    async def main():
        async with migrated_store(database) as store:
            draft = with_subtype(sample_report("P-up"), SUBTYPE_A)
            first = await store.add_report(draft, "key-a", {}, [], images_key="imgs")
            assert await store.for_content("P-up", "key-a", "imgs", draft.models.model_dump()) == first
            base = await store.get(first.report_id)
            assert base.images_key == "imgs"
            signed = await store.add_review(base, with_subtype(first, SUBTYPE_B).model_copy(
                update={"status": "final"}), "Dr A", "", True, [])
            models_b = signed.models.model_dump()
            assert await store.for_content("P-up", "key-b", "imgs", models_b) == signed
            assert await store.for_content("P-up", "key-a", "imgs", draft.models.model_dump()) is None
            assert await store.for_content("P-up", "key-b", "other-images", models_b) is None
            new_rules = {**models_b, "subtype": {**SUBTYPE_B, "rules_sha256": "3" * 64}}
            assert await store.for_content("P-up", "key-b", "imgs", new_rules) is None
            unnamed_rules = {**models_b, "subtype": {k: v for k, v in SUBTYPE_B.items() if k != "rules_sha256"}}
            assert await store.for_content("P-up", "key-b", "imgs", unnamed_rules) == signed, \
                "a service that names no rules is matched by its files"

    run(main())


def test_the_same_upload_stored_twice_at_once_makes_one_report(database):
    """A double submit: both writes come with the same images and models; one report is stored and the
    second write answers it (cached) instead of opening a second report chain for one sample."""
    async def main():
        async with migrated_store(database) as store:
            report = sample_report("P-twice")
            answers = await asyncio.gather(*(store.add_report(report, "k", {}, thumbs(report), images_key="imgs")
                                             for _ in range(4)))
            listed = await store.list("P-twice")
            assert len(listed) == 1
            assert {a.report_id for a in answers} == {listed[0].id}
            assert sorted(a.cached for a in answers) == [False, True, True, True]
            other = with_subtype(report, SUBTYPE_B)
            again = await store.add_report(other, "k2", {}, [], images_key="imgs")
            assert not again.cached and len(await store.list("P-twice")) == 2, "other models: a new report"

    run(main())


def test_a_thumbnail_erased_by_another_patient_while_a_report_is_stored_is_stored_again(database, monkeypatch):
    """Two patients share a cell image; the first is erased while the second's report is being stored, between
    the thumbnail insert (which found the image present and wrote nothing) and the link: the report must
    still show the cell (the link's foreign key fails, the write is retried with its thumbnails)."""
    if database.kind != "postgresql":
        pytest.skip("SQLite has one writer at a time: an erasure cannot run inside another write")
    from sqlalchemy import delete as sql_delete

    from gateway.store.models import ThumbnailRow

    async def main():
        engine = make_engine(database.settings())
        await migrate(engine, database.schema)
        store = ReportStore(engine)
        try:
            first = sample_report("P-first")
            shared = first.cells[0].sha256
            await store.add_report(first, "k1", {}, thumbs(first))
            second = sample_report("P-first").model_copy(update={"patient_id": "P-second"})
            insert = store._insert_thumbnails
            erased = []

            async def insert_then_erased_elsewhere(conn, thumbnails):
                await insert(conn, thumbnails)
                if not erased:  # the first patient's erasure commits now, on its own connection
                    erased.append(await store.erase("P-first"))
                    async with engine.begin() as other:
                        await other.execute(sql_delete(ThumbnailRow).where(ThumbnailRow.sha256 == shared))

            monkeypatch.setattr(store, "_insert_thumbnails", insert_then_erased_elsewhere)
            stored = await store.add_report(second, "k2", {}, thumbs(second))
            assert erased and erased[0].reports == 1
            assert (await store.thumbnail_of_patient(stored.report_id, shared)) is not None, "the cell's image is shown"
        finally:
            await store.close()

    run(main())


@pytest.mark.parametrize("stored_as", ["images_key", "content_key before 0004"])
def test_a_report_made_before_rules_were_named_is_matched_by_version_too(database, stored_as):
    """Subtype 2.1.0 and 2.1.1 share every member file and differ in their weights: a report stored when the
    service named no rules is another model's once the version differs, however it is found."""
    async def main():
        async with migrated_store(database) as store:
            old = {"name": "subtype", "version": "2.1.0", "sha256": "b" * 64}
            report = with_subtype(sample_report("P-rules"), old)
            images = "imgs" if stored_as == "images_key" else None
            stored = await store.add_report(report, "legacy-key", {}, [], images_key=images)
            now = report.models.model_dump()
            newer = {**now, "subtype": {**old, "version": "2.1.1", "rules_sha256": "9" * 64}}
            same = {**now, "subtype": {**old, "rules_sha256": "9" * 64}}
            assert await store.for_content("P-rules", "legacy-key", "imgs", newer) is None
            assert await store.for_content("P-rules", "legacy-key", "imgs", same) == stored

    run(main())
