"""A patient's report versions, and erasure of everything the gateway holds about a patient."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.cell_identity import cell_cache_key
from gateway.pipeline import latest_key, report_key_prefix
from gateway.routers.common import PROBLEMS, audit, authorize, check_patient_id, failure_status, store_errors
from shared.problems import ProblemError
from shared.schemas import ErasureResult, ReportList

router = APIRouter(tags=["patients"])


async def _clear_cache(cache, patient_id: str, sha256s: list[str], cell_models: list[str]) -> int:
    """Delete the patient's cache entries: the labels of these cells under these cell models, and the report
    entries of older gateways."""
    keys = [latest_key(patient_id)] + [cell_cache_key(model, sha) for model in cell_models for sha in sha256s]
    try:
        return await cache.delete(keys, prefixes=[report_key_prefix(patient_id)])
    except Exception as exc:  # noqa: BLE001 - an erasure that cannot clear the cache must not pass silently
        raise ProblemError(503, f"the cache could not be cleared ({type(exc).__name__}); nothing or not everything "
                                "was erased: repeat the request", headers={"Retry-After": "2"}) from None


@router.get("/patients/{patient_id}/reports", response_model=ReportList,
            responses={s: PROBLEMS[s] for s in (401, 403, 404, 422, 429, 503)})
async def list_reports(request: Request, patient_id: str) -> ReportList:
    """Every report version of this patient, newest first (404 when there is none)."""
    status, reports = 200, []
    try:
        authorize(request, "read")
        check_patient_id(patient_id)
        with store_errors():
            reports = await request.app.state.store.list(patient_id)
        if not reports:
            raise ProblemError(404, f"no reports for patient {patient_id}")
        return ReportList(patient_id=patient_id, reports=reports)
    except BaseException as exc:  # audited as the status it ends in
        status = failure_status(exc, status)
        raise
    finally:
        audit(request, "list-reports", status, patient_id if status != 422 else None, detail={"reports": len(reports)})


@router.delete("/patients/{patient_id}", response_model=ErasureResult,
               responses={s: PROBLEMS[s] for s in (401, 403, 422, 429, 503)})
async def erase_patient(request: Request, patient_id: str) -> ErasureResult:
    """Erase everything about this patient: every report version and review, the thumbnails no other
    patient's report shows, and the cache entries (the labels of its reports' cells; the report entries of
    older gateways). Scope `admin`.
    Idempotent: erasing a patient with nothing stored answers 200 with zero counts. The audit log
    keeps one line (the keyed patient hash, who, when, the counts), never the data."""
    state = request.app.state
    status, result = 200, None
    try:
        authorize(request, "admin")
        check_patient_id(patient_id)
        # the cache first, while the database still says which entries are the patient's: were the cache down
        # after the database was erased, a repeated request could no longer find them
        with store_errors():
            shas, cell_models = await state.store.cached_cells_of(patient_id)
        removed = await _clear_cache(state.cache, patient_id, shas, cell_models)
        with store_errors():
            erased = await state.store.erase(patient_id)
        # and again for what a report stored in between added (usually nothing: already removed above)
        removed += await _clear_cache(state.cache, patient_id, erased.sha256s, erased.cell_models)
        result = ErasureResult(patient_id=patient_id, reports_deleted=erased.reports,
                               thumbnails_deleted=erased.thumbnails, cache_entries_deleted=removed)
        return result
    except BaseException as exc:  # audited as the status it ends in
        status = failure_status(exc, status)
        raise
    finally:
        audit(request, "erase", status, patient_id if status != 422 else None,
              detail=result.model_dump(exclude={"patient_id"}) if result else None)
