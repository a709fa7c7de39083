"""Every read and write of the report store, in one place. Report versions are immutable: a
review inserts a new version; nothing is updated in place. Each write is one transaction, so a
failure leaves nothing half-written.

Any database failure (unreachable, timeout, lost connection) surfaces as ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import and_, delete, exists, func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.cell_identity import cell_cache_model_of
from gateway.report_keys import same_models
from gateway.store.models import ReportImageRow, ReportRow, ReviewRow, StoreIdentityRow, ThumbnailRow
from shared.schemas import ModelsUsed, PatientReport, ReportSummary

INSERT_RETRIES = 8


class StoreUnavailable(Exception):
    """The database could not be reached or did not answer in time."""


class StaleVersion(Exception):
    """The version was already replaced by another review; ``newer`` is the version that replaced it."""

    def __init__(self, newer: str | None):
        super().__init__(newer)
        self.newer = newer


@dataclass(frozen=True)
class Thumbnail:
    sha256: str
    jpeg: bytes
    width: int
    height: int


@dataclass(frozen=True)
class StoredReport:
    report: PatientReport
    content_key: str
    appearance: dict
    superseded_by: str | None
    images_key: str | None = None


@dataclass(frozen=True)
class Erased:
    reports: int
    thumbnails: int
    sha256s: list[str]
    cell_models: list[str]
    content_keys: list[str]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def new_report_id() -> str:
    return uuid.uuid4().hex


async def _backoff(attempt: int) -> None:
    """Wait before retrying a write that collided with another one: growing, with jitter so the two part."""
    await asyncio.sleep(random.uniform(0.005, 0.02) * 2 ** attempt)


class ReportStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.kind = engine.dialect.name

    async def _run(self, work, *, write: bool):
        """``work(conn)`` in one transaction; database failures become ``StoreUnavailable``."""
        try:
            if write:
                async with self.engine.begin() as conn:
                    return await work(conn)
            async with self.engine.connect() as conn:
                return await work(conn)
        except (IntegrityError, StaleVersion):
            raise
        except (OperationalError, InterfaceError, DBAPIError, OSError, asyncio.TimeoutError, SQLAlchemyError) as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") \
                from exc

    async def _write_retrying(self, work, give_up: str, collided=None):
        """``work(conn)`` in one write transaction, run again after it collided with another write
        (``IntegrityError``: two writes of one patient took the same sequence number, or a thumbnail another
        report links went away), up to ``INSERT_RETRIES`` times with a jittered backoff; then
        ``StoreUnavailable(give_up)``. ``collided()``, awaited after each collision, may raise instead: a
        race that no retry can win."""
        for attempt in range(INSERT_RETRIES):
            try:
                return await self._run(work, write=True)
            except IntegrityError:
                if collided is not None:
                    await collided()
                if attempt == INSERT_RETRIES - 1:
                    raise StoreUnavailable(give_up) from None
                await _backoff(attempt)
        raise AssertionError("unreachable")

    async def ping(self) -> bool:
        try:
            await self._run(lambda conn: conn.execute(text("SELECT 1")), write=False)
        except StoreUnavailable:
            return False
        return True

    async def close(self) -> None:
        await self.engine.dispose()

    # --- writes ------------------------------------------------------------------------------

    async def _insert_thumbnails(self, conn: AsyncConnection, thumbnails: Iterable[Thumbnail]) -> None:
        rows = [{"sha256": t.sha256, "jpeg": t.jpeg, "width": t.width, "height": t.height, "created_at": _now()}
                for t in thumbnails]
        if not rows:
            return
        if self.kind == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        await conn.execute(insert(ThumbnailRow).on_conflict_do_nothing(index_elements=["sha256"]), rows)

    async def _lock_patient(self, conn: AsyncConnection, patient_id: str) -> None:
        """Hold a lock until the transaction ends, so that writes of one patient (the next sequence number, an
        erasure, the check for an identical upload before storing one) take turns instead of colliding and
        read what the other one wrote. PostgreSQL: a per-patient advisory lock. SQLite has one writer at a
        time, but a transaction takes its write lock only at its first write: a write that changes nothing
        takes it now, so that the reads after it are not overtaken by another writer."""
        if self.kind == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:patient))"), {"patient": patient_id})
        else:
            await conn.execute(ReportRow.__table__.update().where(text("0 = 1")).values(seq=ReportRow.seq))

    async def _insert_version(self, conn: AsyncConnection, report: PatientReport, content_key: str,
                              appearance: dict, created: datetime, reviewed_at: datetime | None,
                              images_key: str | None, supplied: frozenset[str] = frozenset()) -> None:
        """Insert one version and link the thumbnails it shows: those in the store, and always those this write
        ``supplied`` (a concurrent erasure of another patient may have deleted one of them after its insert
        found it present: the link then violates its foreign key and the write is retried, thumbnail and all,
        rather than the report stored without the cell's image)."""
        await self._lock_patient(conn, report.patient_id)
        seq = (await conn.execute(select(func.coalesce(func.max(ReportRow.seq), 0))
                                  .where(ReportRow.patient_id == report.patient_id))).scalar_one() + 1
        await conn.execute(ReportRow.__table__.insert().values(
            id=report.report_id, patient_id=report.patient_id, seq=seq, version=report.version,
            supersedes=report.supersedes, status=report.status, content_key=content_key, created_at=created,
            reviewed_by=report.reviewed_by, reviewed_at=reviewed_at, appearance=appearance,
            body=report.model_dump(mode="json"), **({"images_key": images_key} if images_key else {})))
        shas = sorted({c.sha256 for c in report.cells or []})
        if shas:
            present = set((await conn.execute(select(ThumbnailRow.sha256).where(ThumbnailRow.sha256.in_(shas))))
                          .scalars())
            links = [{"report_id": report.report_id, "sha256": s} for s in shas if s in present or s in supplied]
            if links:
                await conn.execute(ReportImageRow.__table__.insert(), links)

    async def add_report(self, report: PatientReport, content_key: str, appearance: dict,
                         thumbnails: list[Thumbnail], images_key: str | None = None) -> PatientReport:
        """Store the models' report as version 1 of a new report (status preliminary); its id is set here.
        With ``images_key``: when a report of the same images by the same models was stored meanwhile (the
        same upload sent twice at once), that report is answered (``cached`` true) and nothing is stored."""
        report_id = new_report_id()
        report = report.model_copy(update={"report_id": report_id, "version": 1, "status": "preliminary",
                                           "supersedes": None, "first_report_id": report_id, "cached": False})
        created = _now()

        async def work(conn):
            if images_key is not None:
                await self._lock_patient(conn, report.patient_id)
                stored = await self._head_of_images(conn, report.patient_id, images_key, report.models.model_dump())
                if stored is not None:
                    return stored.model_copy(update={"cached": True})
            await self._insert_thumbnails(conn, thumbnails)
            await self._insert_version(conn, report, content_key, appearance, created, None, images_key,
                                       frozenset(t.sha256 for t in thumbnails))
            return report

        return await self._write_retrying(work, "could not allocate a report sequence number")

    async def add_review(self, base: StoredReport, report: PatientReport, reviewer: str, comment: str,
                         sign_off: bool, corrections: list[dict], key_id: str | None = None,
                         personal: bool = False) -> PatientReport:
        """Store ``report`` (built from ``base`` by the review) as the version replacing ``base``, with the
        API key it came with (``personal``: ``reviewer`` is that key's own name, and the report says so).
        ``StaleVersion`` when another review replaced ``base`` first."""
        now = _now()
        report = report.model_copy(update={
            "report_id": new_report_id(), "version": base.report.version + 1, "supersedes": base.report.report_id,
            "first_report_id": base.report.first_report_id or (base.report.report_id if base.report.version == 1
                                                               else None),
            "reviewed_by": reviewer, "reviewer_key_id": key_id if personal else None, "reviewed_at": _iso(now),
            "review_comment": comment or None, "cached": False})

        async def work(conn):
            newer = (await conn.execute(select(ReportRow.id).where(ReportRow.supersedes == base.report.report_id))
                     ).scalar_one_or_none()
            if newer is not None:
                raise StaleVersion(newer)
            await self._insert_version(conn, report, base.content_key, base.appearance, now, now, base.images_key)
            await conn.execute(ReviewRow.__table__.insert().values(
                report_id=report.report_id, reviewer=reviewer, comment=comment, sign_off=sign_off,
                corrections=corrections, key_id=key_id))

        async def replaced_first():  # another review of the same version won (supersedes is unique)?
            newer = await self.superseded_by(base.report.report_id)
            if newer is not None:
                raise StaleVersion(newer) from None

        await self._write_retrying(work, "could not store the review", replaced_first)
        return report

    @staticmethod
    async def _patient_cells(conn, patient_id: str) -> tuple[list, list[str], list[str]]:
        """(the patient's report rows, the image hashes they show, the cell models that labelled them)."""
        rows = (await conn.execute(select(ReportRow.id, ReportRow.content_key, ReportRow.body)
                                   .where(ReportRow.patient_id == patient_id))).all()
        if not rows:
            return [], [], []
        shas = sorted(set((await conn.execute(select(ReportImageRow.sha256)
                                              .where(ReportImageRow.report_id.in_([r.id for r in rows])))).scalars())
                      | {c["sha256"] for r in rows for c in (r.body.get("cells") or [])})
        return rows, shas, sorted({cell_cache_model_of(r.body["models"]) for r in rows})

    async def cached_cells_of(self, patient_id: str) -> tuple[list[str], list[str]]:
        """(image hashes, cell models) whose per-cell cache entries belong to this patient's reports: read before
        an erasure, so that the cache can be cleared first and a repeat after any failure still finds them."""
        async def work(conn):
            _, shas, models = await self._patient_cells(conn, patient_id)
            return shas, models

        return await self._run(work, write=False)

    async def erase(self, patient_id: str) -> Erased:
        """Delete every report version, review and thumbnail link of a patient, and the thumbnails
        that no other patient's report shows."""

        async def work(conn):
            await self._lock_patient(conn, patient_id)
            rows, shas, models = await self._patient_cells(conn, patient_id)
            ids = [r.id for r in rows]
            if not ids:
                return Erased(0, 0, [], [], [])
            await conn.execute(delete(ReviewRow).where(ReviewRow.report_id.in_(ids)))
            await conn.execute(delete(ReportImageRow).where(ReportImageRow.report_id.in_(ids)))
            await conn.execute(ReportRow.__table__.update().where(ReportRow.id.in_(ids)).values(supersedes=None))
            await conn.execute(delete(ReportRow).where(ReportRow.id.in_(ids)))
            orphaned = delete(ThumbnailRow).where(and_(
                ThumbnailRow.sha256.in_(shas),
                ~exists().where(ReportImageRow.sha256 == ThumbnailRow.sha256)))
            thumbnails = (await conn.execute(orphaned)).rowcount if shas else 0
            return Erased(len(ids), thumbnails, shas, models, sorted({r.content_key for r in rows}))

        return await self._write_retrying(work, "could not erase: the patient's images are in use, retry")

    # --- reads -------------------------------------------------------------------------------

    @staticmethod
    def _stored(row, superseded_by: str | None) -> StoredReport:
        return StoredReport(PatientReport(**row.body), row.content_key, row.appearance or {}, superseded_by,
                            row.images_key)

    async def get(self, report_id: str) -> StoredReport | None:
        async def work(conn):
            row = (await conn.execute(select(ReportRow.body, ReportRow.content_key, ReportRow.appearance,
                                             ReportRow.images_key)
                                      .where(ReportRow.id == report_id))).first()
            if row is None:
                return None
            newer = (await conn.execute(select(ReportRow.id).where(ReportRow.supersedes == report_id))
                     ).scalar_one_or_none()
            return self._stored(row, newer)

        return await self._run(work, write=False)

    async def superseded_by(self, report_id: str) -> str | None:
        return await self._run(lambda conn: self._scalar(conn, select(ReportRow.id)
                                                         .where(ReportRow.supersedes == report_id)), write=False)

    @staticmethod
    async def _scalar(conn, statement):
        return (await conn.execute(statement)).scalar_one_or_none()

    async def _newest(self, patient_id: str, *conditions) -> PatientReport | None:
        """The patient's newest version (highest ``seq``) that meets ``conditions``, or None."""
        async def work(conn):
            body = (await conn.execute(select(ReportRow.body).where(ReportRow.patient_id == patient_id, *conditions)
                                       .order_by(ReportRow.seq.desc()).limit(1))).scalar_one_or_none()
            return PatientReport(**body) if body is not None else None

        return await self._run(work, write=False)

    @staticmethod
    async def _head_of_images(conn, patient_id: str, images_key: str, models: dict) -> PatientReport | None:
        """The newest chain head (a version no review replaced) of these images whose models are ``models``."""
        replaced = select(ReportRow.supersedes).where(ReportRow.patient_id == patient_id,
                                                      ReportRow.supersedes.is_not(None))
        bodies = (await conn.execute(select(ReportRow.body)
                                     .where(ReportRow.patient_id == patient_id, ReportRow.images_key == images_key,
                                            ReportRow.id.not_in(replaced))
                                     .order_by(ReportRow.seq.desc()))).scalars()
        for body in bodies:
            if same_models(body["models"], models):
                return PatientReport(**body)
        return None

    async def for_content(self, patient_id: str, content_key: str, images_key: str | None = None,
                          models: dict | None = None) -> PatientReport | None:
        """The newest version of the report made from these images by these models (a repeated upload), or None:
        with ``images_key``, the newest chain head of these images whose models are ``models``
        (``report_keys.same_models``); else, or when there is none, the newest version stored under
        ``content_key`` before revision 0004 (no ``images_key``), if its models are ``models`` too."""
        if images_key is not None:
            found = await self._run(lambda conn: self._head_of_images(conn, patient_id, images_key, models or {}),
                                    write=False)
            if found is not None:
                return found
        legacy = await self._newest(patient_id, ReportRow.content_key == content_key, ReportRow.images_key.is_(None))
        if legacy is not None and models is not None and not same_models(legacy.models.model_dump(), models):
            return None  # e.g. a subtype model whose weights changed with the same files (another version)
        return legacy

    async def latest(self, patient_id: str) -> PatientReport | None:
        return await self._newest(patient_id)

    async def list(self, patient_id: str) -> list[ReportSummary]:
        async def work(conn):
            rows = (await conn.execute(select(ReportRow.id, ReportRow.supersedes, ReportRow.body)
                                       .where(ReportRow.patient_id == patient_id)
                                       .order_by(ReportRow.seq.desc()))).all()
            newer = {r.supersedes: r.id for r in rows if r.supersedes}
            out = []
            for r in rows:
                b = r.body
                out.append(ReportSummary(
                    id=r.id, patient_id=b["patient_id"], version=b["version"], status=b["status"],
                    created_at=b["created_at"], supersedes=r.supersedes, superseded_by=newer.get(r.id),
                    reviewed_by=b.get("reviewed_by"), reviewer_key_id=b.get("reviewer_key_id"),
                    reviewed_at=b.get("reviewed_at"), prediction=b["prediction"],
                    apl_alert=b.get("apl_alert"),
                    models=ModelsUsed(**b["models"])))
            return out

        return await self._run(work, write=False)

    async def thumbnail_of_patient(self, report_id: str, sha256: str) -> tuple[bytes, str] | None:
        """The JPEG of a cell of this report and the report's patient id (for the audit); None when the report does
        not show that cell."""
        async def work(conn):
            row = (await conn.execute(
                select(ThumbnailRow.jpeg, ReportRow.patient_id)
                .join(ReportImageRow, ReportImageRow.sha256 == ThumbnailRow.sha256)
                .join(ReportRow, ReportRow.id == ReportImageRow.report_id)
                .where(ReportImageRow.report_id == report_id, ThumbnailRow.sha256 == sha256))).first()
            return (row.jpeg, row.patient_id) if row else None

        return await self._run(work, write=False)

    async def reviewed_heads(self) -> list[StoredReport]:
        """The newest version of every reviewed report chain (status final or amended)."""
        async def work(conn):
            replaced = select(ReportRow.supersedes).where(ReportRow.supersedes.is_not(None))
            rows = (await conn.execute(select(ReportRow.body, ReportRow.content_key, ReportRow.appearance,
                                              ReportRow.images_key)
                                       .where(ReportRow.status.in_(("final", "amended")),
                                              ReportRow.id.not_in(replaced))
                                       .order_by(ReportRow.created_at))).all()
            return [self._stored(r, None) for r in rows]

        return await self._run(work, write=False)

    async def known_report_ids(self, report_ids: list[str]) -> set[str]:
        """Those of ``report_ids`` that are versions in this store."""
        async def work(conn):
            return set((await conn.execute(select(ReportRow.id).where(ReportRow.id.in_(report_ids)))).scalars())

        return await self._run(work, write=False) if report_ids else set()

    async def identity(self) -> str:
        """This store's random id (made once, by migration 0003): tells one store's exports from another's."""
        async def work(conn):
            return (await conn.execute(select(StoreIdentityRow.id))).scalar_one()

        return await self._run(work, write=False)

    async def thumbnails(self, sha256s: list[str]) -> dict[str, bytes]:
        async def work(conn):
            rows = (await conn.execute(select(ThumbnailRow.sha256, ThumbnailRow.jpeg)
                                       .where(ThumbnailRow.sha256.in_(sha256s)))).all()
            return {r.sha256: r.jpeg for r in rows}

        return await self._run(work, write=False) if sha256s else {}
