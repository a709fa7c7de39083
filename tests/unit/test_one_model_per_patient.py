"""During a rolling upgrade the cell replicas answer with different models: one patient's cells must all
come from one model (chunks answered by another are sent again), or the request fails with 503."""

from __future__ import annotations

import asyncio

import pytest

from gateway.cache import MemoryCache
from gateway.cell_identity import cell_cache_model, cell_model_identity
from gateway.clients import UpstreamError
from gateway.pipeline import MIXED_MODEL_ROUNDS, PatientClassifier

OLD = {"name": "aml-cell-resnet", "version": "2.0.0", "sha256": "a" * 64, "apl_head": None}
NEW = {"name": "aml-cell-resnet", "version": "2.0.0", "sha256": "a" * 64,
       "apl_head": {"name": "aml-apl-cell-head", "version": "1.0.0", "sha256": "b" * 64}}


class ScriptedCells:
    """A cell client whose n-th call is answered by ``script[n]`` (the last one repeats)."""

    def __init__(self, script):
        self.script = script
        self.calls: list[list[str]] = []

    async def classify(self, images, request_id):
        model = self.script[min(len(self.calls), len(self.script) - 1)]
        self.calls.append([name for name, _ in images])
        logit = 0.5 if model["apl_head"] else None
        return {"model": model, "results": [{"filename": name, "label": "blast", "confidence": 0.9,
                                             "apl_logit": logit} for name, _ in images]}


def classifier(cells) -> PatientClassifier:
    pipeline = PatientClassifier(MemoryCache(3600), cells, None, chunk_size=2, chunk_concurrency=1, store=None)
    pipeline._models = snapshot()
    return pipeline


def snapshot() -> dict:
    """A request's view of the models: the cell model OLD, no APL head."""
    return {"cell": {k: OLD[k] for k in ("name", "version", "sha256")}, "apl_cell_head": None}


def images(n):
    return [(f"{i:064x}", f"cell{i}.jpg", b"x") for i in range(n)]


def test_chunks_from_another_model_are_sent_again_until_one_model_answered_all():
    # 3 chunks: NEW, OLD, NEW in the first round; the OLD chunk is sent again and NEW answers it
    cells = ScriptedCells([NEW, OLD, NEW, NEW])
    pipeline, models = classifier(cells), snapshot()
    results, answered_by = asyncio.run(pipeline._classify_missing(images(6), "r1", models))
    assert answered_by == cell_model_identity(NEW)
    assert len(results) == 6 and all(r["apl_logit"] == 0.5 for r in results.values())
    assert cells.calls[3] == cells.calls[1]  # the OLD chunk went again
    assert models["apl_cell_head"]["sha256"] == "b" * 64  # the request's report names the model that answered
    assert pipeline._models == snapshot(), "the shared view is not changed under other requests' feet"
    assert pipeline._models_checked == float("-inf"), "the next request asks the services again"


def test_a_target_model_is_kept_even_when_the_first_round_disagrees():
    cells = ScriptedCells([OLD, OLD, NEW])
    results, answered_by = asyncio.run(classifier(cells)._classify_missing(images(4), "r2", snapshot(),
                                                                           target=cell_model_identity(NEW)))
    assert answered_by == cell_model_identity(NEW)
    assert all(r["apl_logit"] == 0.5 for r in results.values())
    assert len(cells.calls) == 4  # 2 chunks answered by OLD, both sent again


def test_replicas_that_keep_disagreeing_give_503_not_a_mixed_report():
    cells = ScriptedCells([NEW, OLD, OLD])  # the patient's model is NEW (first chunk); OLD answers the rest for ever
    with pytest.raises(UpstreamError) as failure:
        asyncio.run(classifier(cells)._classify_missing(images(4), "r3", snapshot()))
    assert failure.value.status == 503 and "different models" in failure.value.detail
    assert len(cells.calls) == 2 + (MIXED_MODEL_ROUNDS - 1)  # 2 chunks, then the OLD one again each round


class FailingAfter(ScriptedCells):
    """Answers ``n`` chunks with OLD, then the service is busy (503) for good."""

    def __init__(self, n):
        super().__init__([OLD])
        self.n = n

    async def classify(self, images, request_id):
        if len(self.calls) >= self.n:
            self.calls.append([name for name, _ in images])
            raise UpstreamError(503, "cell service is unavailable: queue full")
        return await super().classify(images, request_id)


def test_chunks_answered_before_a_failure_stay_cached_for_the_retry():
    pipeline = classifier(FailingAfter(2))
    with pytest.raises(UpstreamError):
        asyncio.run(pipeline._classify_missing(images(6), "r4", snapshot()))
    keys = [f"cell:{cell_cache_model(*cell_model_identity(OLD))}:{sha}" for sha, _, _ in images(6)]
    cached = asyncio.run(pipeline.cache.get_many(keys))
    assert [c is not None for c in cached] == [True] * 4 + [False] * 2, "the two answered chunks are kept"
    assert cached[0]["label"] == "blast"


def test_chunks_end_at_a_count_or_a_size_and_a_large_image_goes_alone():
    from gateway.pipeline import split_chunks

    items = [(f"{i:064x}", f"c{i}.jpg", b"x" * size) for i, size in enumerate([10, 10, 10, 50, 10, 10, 10, 10])]
    chunks = split_chunks(items, max_count=3, max_bytes=30)
    assert [[len(data) for _, _, data in chunk] for chunk in chunks] == [[10, 10, 10], [50], [10, 10, 10], [10]]
    assert [item for chunk in chunks for item in chunk] == items, "every image once, in order"
    assert split_chunks([], 3, 30) == []


def test_labels_of_the_model_set_aside_leave_the_cache_once_the_patients_model_answered_all():
    """An erasure finds a patient's cache entries through the models its reports name: the chunk answered by
    OLD and sent again to NEW must not leave OLD's labels behind."""
    cells = ScriptedCells([NEW, OLD, NEW, NEW])
    pipeline = classifier(cells)
    asyncio.run(pipeline._classify_missing(images(6), "r5", snapshot()))
    def keys(model):
        return [f"cell:{cell_cache_model(*cell_model_identity(model))}:{sha}" for sha, _, _ in images(6)]
    assert all(c is not None for c in asyncio.run(pipeline.cache.get_many(keys(NEW))))
    assert asyncio.run(pipeline.cache.get_many(keys(OLD))) == [None] * 6


@pytest.mark.parametrize("result", [{"filename": "a", "label": "myeloblast", "confidence": 0.9},
                                    {"filename": "a", "label": "blast"},
                                    {"filename": "a", "label": "blast", "confidence": "high"},
                                    {"filename": "a"}, "blast"])
def test_a_result_this_gateway_cannot_count_is_502_and_never_cached(result):
    class Odd(ScriptedCells):
        async def classify(self, images, request_id):
            self.calls.append([name for name, _ in images])
            return {"model": OLD, "results": [result for _ in images]}

    pipeline = classifier(Odd([OLD]))
    with pytest.raises(UpstreamError) as failure:
        asyncio.run(pipeline._classify_missing(images(2), "r6", snapshot()))
    assert failure.value.status == 502
    key = f"cell:{cell_cache_model(*cell_model_identity(OLD))}:{images(1)[0][0]}"
    assert asyncio.run(pipeline.cache.get_many([key])) == [None]


def test_replicas_that_keep_disagreeing_ask_for_a_wait_as_long_as_the_upgrade():
    from gateway.pipeline import MIXED_MODEL_RETRY_AFTER_S
    from gateway.routers.common import upstream_errors
    from shared.problems import ProblemError

    with pytest.raises(ProblemError) as answered:
        with upstream_errors():
            asyncio.run(classifier(ScriptedCells([NEW, OLD, OLD]))._classify_missing(images(4), "r7", snapshot()))
    assert answered.value.status == 503
    assert answered.value.headers["Retry-After"] == str(MIXED_MODEL_RETRY_AFTER_S) == "60"


def test_a_model_met_mid_request_is_judged_by_its_own_cards_appearance_thresholds():
    """The snapshot holds the old card's thresholds; the report names the model that answered, so its quality
    must use that model's card (asked again), and say so when the service cannot give it."""
    class Cards(ScriptedCells):
        def __init__(self, script, card):
            super().__init__(script)
            self.card = card

        async def model(self):
            return self.card

    new_card = {**NEW, "appearance": {"patient_threshold": 40.0, "image_threshold": 50.0, "reference": {}}}
    pipeline = classifier(Cards([NEW], new_card))
    models = snapshot()
    asyncio.run(pipeline._classify_missing(images(2), "r8", models))
    assert asyncio.run(pipeline._appearance_of(models)) == {"patient_threshold": 40.0, "image_threshold": 50.0}
    pipeline.cells.card = {**OLD, "appearance": {"patient_threshold": 4.0}}  # a replica still on the old model
    assert asyncio.run(pipeline._appearance_of(models)) == {}

    async def unreachable():
        raise UpstreamError(503, "cell service is unreachable")

    pipeline.cells.model = unreachable  # the labels are in hand: the report goes on without thresholds
    assert asyncio.run(pipeline._appearance_of(models)) == {}
