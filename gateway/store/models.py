"""Tables of the report store (SQLAlchemy 2). Changes need a migration in ``migrations/versions``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {"ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
          "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s"}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ReportRow(Base):
    """One immutable report version. A review inserts a new row whose ``supersedes`` names the
    version it replaces; ``supersedes`` is unique, so only one review of a version can win."""

    __tablename__ = "reports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), nullable=False)
    seq: Mapped[int] = mapped_column(Integer, nullable=False, doc="per patient, increasing: the newest is the latest")
    version: Mapped[int] = mapped_column(Integer, nullable=False, doc="1 for the models' report, +1 per review")
    supersedes: Mapped[str | None] = mapped_column(String(32), ForeignKey("reports.id", ondelete="CASCADE"),
                                                   unique=True, nullable=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    content_key: Mapped[str] = mapped_column(String(64), nullable=False, doc="hash of models + images")
    images_key: Mapped[str | None] = mapped_column(String(64), nullable=True,
                                                   doc="hash of the images alone (null before revision 0004)")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    reviewed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    appearance: Mapped[dict] = mapped_column(JSON, nullable=False, default=dict,
                                             doc="the cell model card's appearance thresholds at the time")
    body: Mapped[dict] = mapped_column(JSON, nullable=False, doc="the PatientReport, cells included")

    __table_args__ = (UniqueConstraint("patient_id", "seq"), Index("ix_reports_patient_seq", "patient_id", "seq"),
                      Index("ix_reports_patient_content", "patient_id", "content_key"),
                      Index("ix_reports_patient_images", "patient_id", "images_key"))


class ReportImageRow(Base):
    """Which thumbnails a report shows (so erasure knows which ones nobody else needs)."""

    __tablename__ = "report_images"

    report_id: Mapped[str] = mapped_column(String(32), ForeignKey("reports.id", ondelete="CASCADE"),
                                           primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), ForeignKey("thumbnails.sha256"), primary_key=True, index=True)


class ThumbnailRow(Base):
    """A cell image as a bounded JPEG (at most 144x144 px, quality 85), by the sha256 of the uploaded file."""

    __tablename__ = "thumbnails"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    jpeg: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    width: Mapped[int] = mapped_column(Integer, nullable=False)
    height: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class ReviewRow(Base):
    """What a reviewer sent, beside the version it produced (kept for the LIS and the audit)."""

    __tablename__ = "reviews"

    report_id: Mapped[str] = mapped_column(String(32), ForeignKey("reports.id", ondelete="CASCADE"),
                                           primary_key=True, doc="the version this review produced")
    reviewer: Mapped[str] = mapped_column(String(128), nullable=False)
    comment: Mapped[str] = mapped_column(Text, nullable=False, default="")
    sign_off: Mapped[bool] = mapped_column(nullable=False)
    corrections: Mapped[list] = mapped_column(JSON, nullable=False)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True,
                                               doc="the API key the review came with (null before revision 0002)")


class StoreIdentityRow(Base):
    """One row: this store's random id, made by migration 0003 (an export of reviewed cells records it)."""

    __tablename__ = "store_identity"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
