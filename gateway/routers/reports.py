"""Report versions: read one (JSON, FHIR, HL7 v2), its cell thumbnails, and the review that makes
the next version (scope ``review``)."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from gateway.routers.common import (PROBLEMS, REPORT_RESPONSES, audit, authorize, check_report_id,
                                    failure_status, render, store_errors, upstream_errors)
from gateway.security import ApiKey, checked_reviewer, same_name
from gateway.store.repository import StaleVersion
from shared.problems import ProblemError
from shared.schemas import PatientReport, ReviewRequest

router = APIRouter(tags=["reports"])
SHA256 = re.compile(r"^[0-9a-f]{64}$")


async def _load(request: Request, report_id: str):
    check_report_id(report_id)
    with store_errors():
        stored = await request.app.state.store.get(report_id)
    if stored is None:
        raise ProblemError(404, f"no report {report_id}")
    return stored


@router.get("/reports/{report_id}", response_model=PatientReport, responses=REPORT_RESPONSES)
async def get_report(request: Request, report_id: str,
                     include: str | None = Query(None, description="'cells' adds the per-image labels")):
    """One report version, exactly as stored (versions never change)."""
    status, stored = 200, None
    try:
        authorize(request, "read")
        stored = await _load(request, report_id)
        response = render(request, stored.report, include == "cells")
        if stored.superseded_by:
            response.headers["X-Superseded-By"] = stored.superseded_by
        return response
    except BaseException as exc:  # audited as the status it ends in
        status = failure_status(exc, status)
        raise
    finally:
        report = stored.report if stored else None
        audit(request, "read-report", status, report.patient_id if report else None,
              prediction=report.prediction if report else None, report_id=report.report_id if report else None,
              status=report.status if report else None)


@router.get("/reports/{report_id}/cells/{sha256}.jpg", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}, "description": "the cell's thumbnail (<= 144x144)"},
                       **{s: PROBLEMS[s] for s in (401, 403, 404, 503)}})
async def cell_thumbnail(request: Request, report_id: str, sha256: str):
    """The stored thumbnail of one cell of this report (for review days later)."""
    status, patient_id = 200, None
    try:
        authorize(request, "read")
        check_report_id(report_id)
        if not SHA256.fullmatch(sha256):
            raise ProblemError(404, "no such cell")
        with store_errors():
            found = await request.app.state.store.thumbnail_of_patient(report_id, sha256)
        if found is None:
            raise ProblemError(404, f"report {report_id} has no stored thumbnail for cell {sha256[:12]}")
        jpeg, patient_id = found
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, no-store"})
    except BaseException as exc:  # audited as the status it ends in
        status = failure_status(exc, status)
        raise
    finally:  # an image of a patient's blood was shown: audited like a report read, linked to the patient
        audit(request, "read-thumbnail", status, patient_id, report_id=report_id[:32], detail={"cell": sha256[:64]})


def signed_review(request: Request, key: ApiKey, review: ReviewRequest) -> ReviewRequest:
    """The review with the name it is signed with: a personal key's own (a different name is 403), else the
    name the request gives (422 without one; 403 where this gateway accepts reviews from personal keys only)."""
    if key.reviewer is not None:
        if review.reviewer is not None and not same_name(review.reviewer, key.reviewer):
            raise ProblemError(403, f"this key is {key.reviewer}'s own: its reviews are signed with that name, not "
                                    f"{review.reviewer!r} (leave out reviewer, or use your own key)")
        return review.model_copy(update={"reviewer": key.reviewer})
    if request.app.state.review_requires_personal_key:
        raise ProblemError(403, f"key {key.key_id} names no reviewer, and this gateway accepts reviews only from "
                                "personal keys (REVIEW_REQUIRES_PERSONAL_KEY): review with your own key")
    try:
        return review.model_copy(update={"reviewer": checked_reviewer(review.reviewer)})
    except ValueError:
        raise ProblemError(422, f"key {key.key_id} is a shared key (it names no reviewer): the review must name its "
                                "reviewer (reviewer: a name or staff id of 1-128 printable characters, with a letter or "
                                "digit)") from None


def review_caller(request: Request, report_id: str) -> ApiKey:
    """The reviewer's key, checked before the body is validated (FastAPI runs dependencies first): a request
    without a valid key is 401 whatever its body, and a refused key is audited here, as the handler that would
    audit it does not run. A body refused after the key was accepted is audited by ``audit_invalid_review``."""
    try:
        key = authorize(request, "review")
    except BaseException as exc:
        audit(request, "review", failure_status(exc, 401), None, report_id=report_id[:32])
        raise
    request.state.review_key_checked = True
    return key


def audit_invalid_review(request: Request) -> ProblemError | None:
    """For a review whose body FastAPI refused: the key's refusal (401, 403, 429), audited, when the key was not
    checked yet (a body that is not JSON at all is refused before any dependency runs), else None with the 422
    audited. Nothing for other requests."""
    if request.scope.get("endpoint") is not review_report:
        return None
    report_id = str(request.path_params.get("report_id", ""))[:32]
    if not getattr(request.state, "review_key_checked", False):
        try:
            review_caller(request, report_id)
        except ProblemError as refused:
            return refused  # audited by review_caller
    audit(request, "review", 422, None, report_id=report_id, detail={"invalid_body": True})
    return None


@router.post("/reports/{report_id}/review", response_model=PatientReport, status_code=201,
             responses={201: {"description": "the new version"},
                        **{s: PROBLEMS[s] for s in (401, 403, 404, 409, 422, 429, 502, 503, 504)}})
async def review_report(request: Request, report_id: str, review: ReviewRequest,
                        key: ApiKey = Depends(review_caller),
                        include: str | None = Query(None, description="'cells' adds the per-image labels")):
    """Correct cell labels and (optionally) sign off: makes the next version of this report.

    The version reviewed must be the newest of its report (409 otherwise: someone else reviewed
    first; reload and review the newer version). Counts, differential, quality and the subtype
    prediction are recomputed from the corrected labels; the model's labels stay in `model_label`.
    The version is signed with the reviewer a personal key belongs to (`reviewer_key_id` is then set), or with
    the `reviewer` a shared key's request names.
    """
    state = request.app.state
    status, base, report, signed = 201, None, None, None
    claimed = review.reviewer
    try:
        review = signed = signed_review(request, key, review)
        base = await _load(request, report_id)
        if base.superseded_by:
            raise ProblemError(409, f"report {report_id} was already replaced by version {base.superseded_by}: "
                                    "review the newest version", title="Stale Version")
        with upstream_errors():
            draft = await state.classifier.review(base, review, request.state.request_id)
        with store_errors():
            try:
                report = await state.classifier.store_review(base, draft, review, key.key_id,
                                                             personal=key.reviewer is not None)
            except StaleVersion as exc:
                raise ProblemError(409, f"report {report_id} was just replaced by version {exc.newer} (another "
                                        "review was first): review the newest version", title="Stale Version") from None
        response = render(request, report, include == "cells")
        response.status_code = 201
        response.headers["Location"] = f"/reports/{report.report_id}"
        return response
    except BaseException as exc:  # audited as the status it ends in
        status = failure_status(exc, status)
        raise
    finally:
        subject = report or (base.report if base else None)
        audit(request, "review", status, subject.patient_id if subject else None, report,
              report_id=report.report_id if report else report_id[:32],
              detail=_audit_detail(key, claimed, signed, review, report_id))


def _audit_detail(key: ApiKey | None, claimed: str | None, signed: ReviewRequest | None, review: ReviewRequest,
                  report_id: str) -> dict:
    """A review's audit detail: ``reviewer`` the name it was signed with (refused: the personal key's owner, or
    none), and ``claimed_reviewer`` the name the request gave where it is not that one."""
    reviewer = signed.reviewer if signed else (key.reviewer if key else None)
    detail = {"reviewer": reviewer, "corrections": len(review.corrections), "sign_off": review.sign_off,
              "replaces": report_id[:32]}
    if claimed is not None and (reviewer is None or not same_name(claimed, reviewer)):
        detail["claimed_reviewer"] = claimed[:128]
    return detail
