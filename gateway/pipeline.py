"""One patient's classification: cached cell predictions, chunks to the cell service, counts,
the subtype service, and the report (stored; a repeated upload finds it in the store).

Each request works on its own snapshot of the models behind the services, so that a report names
exactly the models that made it even while another request notices an upgrade."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from datetime import datetime, timezone

from gateway import apl, cell_identity
from gateway.cache import Cache
from gateway.clients import CellServiceClient, SubtypeServiceClient, UpstreamError, UpstreamRejected
from gateway.quality import assess
from gateway.report_keys import content_key, images_key
from gateway.store.repository import ReportStore, StoredReport
from gateway.thumbnails import make_thumbnails
from shared.differential import per_100_leukocytes
from shared.problems import ProblemError
from shared.schemas import ClassifiedCell, PatientReport, ReviewRequest
from shared.vocabulary import CELL_LABELS, CELL_TYPES, LEUKOCYTE_TYPES, UNCLASSIFIED

log = logging.getLogger("gateway.pipeline")
MODELS_RECHECK_S = 30.0
MIXED_MODEL_ROUNDS = 4  # rounds of re-sending chunks answered by another model than the patient's
MIXED_MODEL_RETRY_AFTER_S = 60  # what a client is told to wait when the replicas still disagree (an upgrade)


def latest_key(patient_id: str) -> str:
    """Where gateways before 2026-12-07 cached a patient's latest report (still erased with the patient)."""
    return f"latest:{patient_id}"


def report_key_prefix(patient_id: str) -> str:
    """Where gateways before 2026-12-07 cached a patient's reports by content (still erased with the patient)."""
    return f"report:{patient_id}:"


def _models_info(card: dict) -> dict[str, str]:
    """A model's part of ``models``: name, version, file hash and, where its service reports it, the hash of the
    rules that decide its answers besides the file (``rules_sha256``)."""
    rules = card.get("rules_sha256")
    return ({"name": card["name"], "version": card["version"], "sha256": card["sha256"]}
            | ({"rules_sha256": rules} if rules else {}))


def _appearance_thresholds(card: dict) -> dict:
    """The thresholds of a cell model card's ``appearance`` section (what quality is judged by)."""
    return {k: v for k, v in (card.get("appearance") or {}).items() if k.endswith("_threshold")}


def _optional_info(card: dict | None) -> dict[str, str] | None:
    return _models_info(card) if card else None


def duplicates_warning(n_copies: int, n_images: int, copies: list[tuple[str, str]] | None = None) -> str:
    """The report's warning about images uploaded more than once; ``copies``: (name, name of the first upload)."""
    text = (f"{n_copies} of {n_images} images are exact copies of other images of this upload (the same content) "
            "and were counted once")
    if copies:
        named = ", ".join(f"{name} = {first}" for name, first in copies[:5])
        text += f": {named}" + (", ..." if len(copies) > 5 else "")
    return text


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _result_problem(result) -> str | None:
    """What is wrong with one image's result (None when it is a label this gateway counts, or an error)."""
    if not isinstance(result, dict):
        return "a result that is not an object"
    if "label" not in result:
        return None if isinstance(result.get("error"), str) else "a result with neither label nor error"
    if result["label"] not in CELL_LABELS:
        return f"the label {str(result['label'])[:40]!r}, which this gateway's vocabulary lacks"
    if not _is_number(result.get("confidence")):
        return "a label without a numeric confidence"
    for optional in ("appearance_distance", "apl_logit"):
        if result.get(optional) is not None and not _is_number(result[optional]):
            return f"a non-numeric {optional}"
    return None


def _check_answer(chunk: list, body) -> None:
    """502 unless ``body`` is the cell service's classification of exactly this chunk, every result a label of
    this gateway's vocabulary (or an error): checked before anything is cached, so that a wrong answer is a 502
    now and not a 500 served from the cache for days."""
    if not isinstance(body, dict) or not isinstance(body.get("results"), list) \
            or not isinstance(body.get("model"), dict) or "sha256" not in body["model"]:
        raise UpstreamError(502, "cell service returned an answer that is not a classification")
    if len(body["results"]) != len(chunk):
        raise UpstreamError(502, "cell service returned a wrong number of results")
    for result in body["results"]:
        problem = _result_problem(result)
        if problem is not None:
            raise UpstreamError(502, f"cell service returned {problem} (another vocabulary version behind "
                                     "CELL_URL?)")


def split_chunks(items: list[tuple[str, str, bytes]], max_count: int, max_bytes: int) -> list[list]:
    """(sha256, filename, bytes) in order -> chunks of at most ``max_count`` images and, unless one image is
    larger on its own, at most ``max_bytes`` of image data."""
    chunks: list[list] = []
    current: list = []
    size = 0
    for item in items:
        if current and (len(current) >= max_count or size + len(item[2]) > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += len(item[2])
    if current:
        chunks.append(current)
    return chunks


class PatientClassifier:
    def __init__(self, cache: Cache, cells: CellServiceClient, subtype: SubtypeServiceClient, *,
                 chunk_size: int, chunk_concurrency: int, store: ReportStore, chunk_max_bytes: int = 32 << 20):
        self.cache = cache
        self.store = store
        self.cells = cells
        self.subtype = subtype
        self.chunk_size = chunk_size
        self.chunk_concurrency = chunk_concurrency
        self.chunk_max_bytes = chunk_max_bytes
        self._models: dict[str, dict[str, str]] = {}
        self._appearance: dict = {}  # the cell model card's appearance thresholds
        self._models_checked = -math.inf

    async def models(self) -> dict[str, dict[str, str] | None]:
        """Names, versions and hashes of the models behind the services (the APL cell head and the APL
        patient model: None where absent), asked again every ``MODELS_RECHECK_S`` so that an upgraded
        service never gets a stale stored report. A copy: the caller may change it."""
        return (await self._snapshot())[0]

    async def _snapshot(self) -> tuple[dict, dict]:
        """(models, the cell model card's appearance thresholds), read together, as copies for one request."""
        if time.monotonic() - self._models_checked > MODELS_RECHECK_S or len(self._models) < 2:
            cell, subtype = await asyncio.gather(self.cells.model(), self.subtype.model())
            self._models = {"cell": _models_info(cell), "subtype": _models_info(subtype),
                            "apl_cell_head": _optional_info(cell.get("apl_head")),
                            "apl_patient": _optional_info(subtype.get("apl"))}
            self._appearance = _appearance_thresholds(cell)
            self._models_checked = time.monotonic()
        return dict(self._models), dict(self._appearance)

    def _models_changed(self) -> None:
        """A request met other models than the shared view: ask the services again on the next request."""
        self._models_checked = -math.inf

    async def _classify_missing(self, missing: list[tuple[str, str, bytes]], request_id: str, models: dict,
                                target: tuple | None = None) -> tuple[dict[str, dict], tuple]:
        """(sha256, filename, bytes) of images not in the cache -> (per-hash result, the model that made them).

        One patient's cells all come from one model: during a rolling upgrade the replicas behind
        ``CELL_URL`` can answer with different models (CNN or APL head), so a chunk answered by another
        model than ``target`` (default: the one that answered most images in the first round) is sent
        again, up to ``MIXED_MODEL_ROUNDS`` rounds; then the request fails with 503 rather than
        mixing versions in one report. When the model that answered is not the one in ``models`` (the
        request's snapshot), the snapshot is updated to it."""
        chunks = split_chunks(missing, self.chunk_size, self.chunk_max_bytes)
        results: dict[str, dict] = {}
        model_of: dict[tuple, dict] = {}
        set_aside: list[str] = []  # cache keys of the labels of other models than the patient's
        for _ in range(MIXED_MODEL_ROUNDS):
            answered = await self._send_chunks(chunks, request_id)
            by_model: dict[tuple, list] = {}
            for chunk, body in answered:
                identity = cell_identity.cell_model_identity(body["model"])
                model_of[identity] = body["model"]
                by_model.setdefault(identity, []).append((chunk, body))
            if target is None:
                target = max(by_model, key=lambda k: sum(len(chunk) for chunk, _ in by_model[k]))
            for chunk, body in by_model.pop(target, []):
                for (sha, _, _), result in zip(chunk, body["results"]):
                    results[sha] = result
            set_aside += [cell_identity.cell_cache_key(cell_identity.cell_cache_model(*identity), sha)
                          for identity, answers in by_model.items() for chunk, _ in answers for sha, _, _ in chunk]
            chunks = [chunk for answers in by_model.values() for chunk, _ in answers]
            if not chunks:
                break
            log.warning("cell replicas answer with different models (an upgrade in progress?): %d chunk(s) "
                        "sent again so that the patient's cells come from one model", len(chunks))
        else:
            raise UpstreamError(503, "the cell service's replicas answer with different models (an upgrade in "
                                     "progress?): retry in a minute", retry_after_s=MIXED_MODEL_RETRY_AFTER_S)
        await self._forget(set_aside)
        if target in model_of and target != cell_identity.cell_model_identity_of(models):
            body_model = model_of[target]  # the service was upgraded
            models["cell"] = _models_info(body_model)
            models["apl_cell_head"] = _optional_info(body_model.get("apl_head"))
            self._models_changed()
        return results, target

    async def _appearance_of(self, models: dict) -> dict:
        """The appearance thresholds of the cell model that answered, when it is not the snapshot's (an upgrade met
        during the request): the old card's thresholds would judge the new model's distances. Asked of the service;
        when it still answers with another model (replicas mid-upgrade), none, and the report says so."""
        try:
            card = await self.cells.model()
        except (UpstreamError, UpstreamRejected):  # the labels are in hand: the report says what it lacks
            card = None
        if card and cell_identity.cell_model_identity(card) == cell_identity.cell_model_identity_of(models):
            return _appearance_thresholds(card)
        log.warning("the cell model's appearance thresholds could not be read for the model that answered")
        return {}

    async def _forget(self, keys: list[str]) -> None:
        """Remove the cached labels of the models the report does not name (chunks sent again during an upgrade):
        an erasure finds a patient's cache entries through the models its reports name, and would miss these.
        Best effort: a cache that cannot delete them now lets them expire."""
        if not keys:
            return
        try:
            await self.cache.delete(keys)
        except Exception as exc:  # noqa: BLE001 - the report does not depend on it
            log.warning("could not remove %d cached labels of another model (%s)", len(keys), type(exc).__name__)

    async def _send_chunks(self, chunks: list, request_id: str) -> list[tuple[list, dict]]:
        """Every chunk to the cell service (``chunk_concurrency`` at once). Each answer's labels are cached
        as soon as it arrives, under the model that made them, so a request that fails on a later chunk
        (a busy service) leaves its finished work for the retry."""
        semaphore = asyncio.Semaphore(self.chunk_concurrency)

        async def run(chunk):
            async with semaphore:
                body = await self.cells.classify([(name, data) for _, name, data in chunk], request_id)
            _check_answer(chunk, body)
            await self._cache_cells(chunk, body)
            return chunk, body

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(run(chunk)) for chunk in chunks]
        except ExceptionGroup as failures:  # the service's own answer first; anything else is a bug (500)
            upstream = [e for e in failures.exceptions if isinstance(e, (UpstreamError, UpstreamRejected))]
            if upstream:
                raise upstream[0] from None
            raise failures.exceptions[0] from failures
        return [task.result() for task in tasks]

    async def _cache_cells(self, chunk: list, body: dict) -> None:
        """A chunk's labels, keyed by the image hash and the model that answered (failed images are not cached)."""
        model = cell_identity.cell_cache_model(*cell_identity.cell_model_identity(body["model"]))
        await self.cache.set_many({
            cell_identity.cell_cache_key(model, sha): {"label": r["label"], "confidence": r["confidence"],
                                                       "appearance_distance": r.get("appearance_distance"),
                                                       "apl_logit": r.get("apl_logit")}
            for (sha, _, _), r in zip(chunk, body["results"]) if "label" in r})

    async def classify(self, patient_id: str, images: list[tuple[str, bytes]], request_id: str) -> PatientReport:
        """A repeated upload (the same images, the same models) answers the newest stored version of its
        report (``cached`` true, reviews included) without calling the cell service; otherwise a new report."""
        hashes = await asyncio.to_thread(lambda: [hashlib.sha256(data).hexdigest() for _, data in images])
        models, appearance = await self._snapshot()
        by_images = images_key(hashes, images)
        stored = await self.store.for_content(patient_id, content_key(models, hashes, images), by_images, models)
        if stored is not None:
            return stored.model_copy(update={"cached": True})

        looked_up = cell_identity.cell_model_identity_of(models)
        cell_key = cell_identity.cell_cache_model(*looked_up)
        unique = list(dict.fromkeys(hashes))
        known = dict(zip(unique, await self.cache.get_many([cell_identity.cell_cache_key(cell_key, sha) for sha in unique])))
        first_of = {}
        for sha, (name, data) in zip(hashes, images):
            first_of.setdefault(sha, (sha, name, data))
        missing = [first_of[sha] for sha in unique if known[sha] is None]
        fresh, answered_by = (await self._classify_missing(missing, request_id, models) if missing
                              else ({}, looked_up))
        if answered_by != looked_up and any(v is not None for v in known.values()):
            # the service was upgraded since the cache lookup: the cached cells are the old model's
            stale = [first_of[sha] for sha in unique if known[sha] is not None]
            again, _ = await self._classify_missing(stale, request_id, models, target=answered_by)
            fresh.update(again)
            known = {sha: None for sha in unique}
        if answered_by != looked_up:
            appearance = await self._appearance_of(models)
        per_hash = {**{sha: v for sha, v in known.items() if v is not None}, **fresh}
        report = await self._report(patient_id, request_id, images, hashes, per_hash, models, appearance)
        labelled = {c.sha256 for c in report.cells or []}
        thumbnails = await asyncio.to_thread(
            make_thumbnails, {sha: data for sha, (_, data) in zip(hashes, images) if sha in labelled})
        # stored under the models that made it (the snapshot follows an upgrade met on the way); an identical
        # upload stored meanwhile (a double submit) is answered instead of a second report
        return await self.store.add_report(report, content_key(models, hashes, images), appearance, thumbnails,
                                           images_key=by_images)

    async def _report(self, patient_id, request_id, images, hashes, per_hash, models: dict,
                      appearance: dict) -> PatientReport:
        counts = {label: 0 for label in CELL_LABELS}
        cells, failed, distances = [], [], []
        first_name: dict[str, str] = {}  # sha256 -> the name the image was first uploaded under
        copies: list[tuple[str, str]] = []  # (name, name of the first upload of the same content)
        for sha, (name, _) in zip(hashes, images):
            if sha in first_name:  # the same file again is the same cell: counted once
                copies.append((name, first_name[sha]))
                continue
            first_name[sha] = name
            result = per_hash[sha]
            if "label" in result:
                counts[result["label"]] += 1
                distances.append(result.get("appearance_distance"))
                cells.append({"filename": name, "sha256": sha, "label": result["label"],
                              "confidence": result["confidence"],
                              "appearance_distance": result.get("appearance_distance"),
                              "apl_logit": result.get("apl_logit")})
            else:
                failed.append({"filename": name, "error": result.get("error", "not classified")})
        leukocytes = sum(counts[t] for t in LEUKOCYTE_TYPES)
        if leukocytes == 0:
            example = f"; e.g. {failed[0]['filename']}: {failed[0]['error']}" if failed else ""
            raise ProblemError(422, f"no leukocytes among the {len(images)} images ({len(failed)} could not be "
                                    f"read{example}): a differential needs white cells")
        head = models.get("apl_cell_head")
        subtype = await self.subtype.predict(apl.subtype_request(counts, cells, head and head["sha256"]), request_id)
        answered = {"subtype": _models_info(subtype["model"])}
        if subtype.get("apl"):
            answered["apl_patient"] = _models_info(subtype["apl"]["model"])
        if any(models.get(k) != v for k, v in answered.items()):
            models.update(answered)  # the subtype service was upgraded since the snapshot
            self._models_changed()
        apl_fields = apl.report_fields(subtype, cells)
        quality, quality_warnings = assess(counts, distances, appearance)
        warnings = (apl.disagreement_warnings(subtype["prediction"], apl_fields["apl_probability"],
                                              apl_fields["apl_alert"])
                    + apl.missing_warnings(models) + quality_warnings + list(subtype.get("warnings", [])))
        if failed:
            warnings.append(f"{len(failed)} of {len(images)} images could not be classified (see failed)")
        if copies:
            warnings.append(duplicates_warning(len(copies), len(images), copies))
        if not self.cache.available:
            warnings.append("cache unavailable: the cells' labels were not cached")
        report = PatientReport(
            patient_id=patient_id,
            request_id=request_id,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            n_images=len(images),
            n_classified=sum(counts[t] for t in CELL_TYPES),
            n_unclassified=counts[UNCLASSIFIED],
            n_failed=len(failed),
            n_duplicates=len(copies),
            failed=failed,
            cell_counts=counts,
            leukocyte_differential={t: round(100.0 * counts[t] / leukocytes, 2) for t in LEUKOCYTE_TYPES},
            per_100_leukocytes={t: round(v, 2) for t, v in per_100_leukocytes(counts).items()},
            quality=quality,
            aml_probability=subtype["aml_probability"],
            prediction=subtype["prediction"],
            probabilities=subtype["probabilities"],
            **apl_fields,
            models={"cell": models["cell"], "subtype": models["subtype"],
                    "apl_cell_head": models.get("apl_cell_head"), "apl_patient": models.get("apl_patient")},
            cached=False,
            warnings=warnings,
            cells=cells,
        )
        return report

    async def latest(self, patient_id: str) -> PatientReport | None:
        """Always from the store: a cached copy could lag behind a review or a new report committed by
        another request or gateway replica, and 'latest' must never show a superseded version."""
        return await self.store.latest(patient_id)

    async def review(self, base: StoredReport, review: ReviewRequest, request_id: str) -> PatientReport:
        """The new version a review makes: corrected labels replace the model's (which are kept in
        ``model_label``), counts, differential, quality and the subtype prediction are recomputed from
        them (the subtype service gets the corrected counts; no image is classified again)."""
        old = base.report
        if old.status in ("final", "amended") and not review.sign_off:
            raise ProblemError(422, f"report {old.report_id} was released as {old.status}: a change to it is an "
                                    "amendment and needs sign_off true")
        corrections = {c.sha256: c.label for c in review.corrections}
        known = {c.sha256 for c in old.cells or []}
        unknown = sorted(set(corrections) - known)
        if unknown:
            raise ProblemError(422, f"{len(unknown)} corrected cell(s) are not in report {old.report_id}: "
                                    + ", ".join(u[:12] for u in unknown[:5]))
        cells: list[ClassifiedCell] = []
        for cell in old.cells or []:
            model_label = cell.model_label or cell.label
            label = corrections.get(cell.sha256, cell.label)
            cells.append(cell.model_copy(update={"label": label,
                                                 "model_label": model_label if label != model_label else None}))
        counts = {label: 0 for label in CELL_LABELS}
        for cell in cells:
            counts[cell.label] += 1
        leukocytes = sum(counts[t] for t in LEUKOCYTE_TYPES)
        if leukocytes == 0:
            raise ProblemError(422, "after these corrections no leukocyte is left: a differential needs white cells")
        head = old.models.apl_cell_head
        cell_dicts = [c.model_dump() for c in cells]
        subtype = await self.subtype.predict(apl.subtype_request(counts, cell_dicts, head and head["sha256"]),
                                             request_id)
        apl_fields = apl.report_fields(subtype, cell_dicts)
        apl_patient = _models_info(subtype["apl"]["model"]) if subtype.get("apl") else old.models.apl_patient
        kept_apl = []
        if not subtype.get("apl") and old.apl_probability is not None:
            # e.g. the APL model was upgraded and no longer takes this report's cell logits: a review must
            # never drop an alert silently, so the version keeps the assessment it replaces, and says so
            apl_fields = {"apl_probability": old.apl_probability, "apl_alert": old.apl_alert,
                          "apl_threshold": old.apl_threshold, "apl_top_cells": [c.model_dump() for c in old.apl_top_cells]}
            kept_apl = [f"the APL assessment could not be recomputed with the corrected labels (the subtype service "
                        f"gave none): it is version {old.version}'s, made before the corrections"]
        quality, quality_warnings = assess(counts, [c.appearance_distance for c in cells], base.appearance)
        warnings = (apl.disagreement_warnings(subtype["prediction"], apl_fields["apl_probability"],
                                              apl_fields["apl_alert"])
                    + apl.missing_warnings({"apl_cell_head": head, "apl_patient": apl_patient})
                    + kept_apl + quality_warnings + list(subtype.get("warnings", [])))
        if old.failed:
            warnings.append(f"{len(old.failed)} of {old.n_images} images could not be classified (see failed)")
        if old.n_duplicates:
            warnings.append(duplicates_warning(old.n_duplicates, old.n_images))
        changed = sum(1 for c in cells if c.model_label is not None)
        if changed:
            warnings.append(f"{changed} cell label(s) corrected by the reviewer")
        status = ("amended" if old.status in ("final", "amended") else "final") if review.sign_off else "preliminary"
        return PatientReport.model_validate({
            **old.model_dump(),
            "request_id": request_id,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "status": status,
            "n_classified": sum(counts[t] for t in CELL_TYPES),
            "n_unclassified": counts[UNCLASSIFIED],
            "cell_counts": counts,
            "leukocyte_differential": {t: round(100.0 * counts[t] / leukocytes, 2) for t in LEUKOCYTE_TYPES},
            "per_100_leukocytes": {t: round(v, 2) for t, v in per_100_leukocytes(counts).items()},
            "quality": quality.model_dump(),
            "aml_probability": subtype["aml_probability"],
            "prediction": subtype["prediction"],
            "probabilities": subtype["probabilities"],
            **apl_fields,
            "models": {"cell": old.models.cell, "subtype": _models_info(subtype["model"]), "apl_cell_head": head,
                       "apl_patient": apl_patient},
            "cached": False,
            "warnings": warnings,
            "cells": cell_dicts,
        })

    async def store_review(self, base: StoredReport, report: PatientReport, review: ReviewRequest,
                           key_id: str | None = None, personal: bool = False) -> PatientReport:
        """``review.reviewer`` is the name it is signed with; ``personal``: it is the name of key ``key_id``."""
        return await self.store.add_review(base, report, review.reviewer, review.comment, review.sign_off,
                                           [c.model_dump() for c in review.corrections], key_id, personal)
