"""The caller's own key: what it may do and whose it is (``GET /me``), so a client such as the lab
page can show who will sign a review before one is sent."""

from __future__ import annotations

from fastapi import APIRouter, Request

from gateway.routers.common import PROBLEMS, authorize
from shared.schemas import KeyIdentity

router = APIRouter(tags=["access"])


@router.get("/me", response_model=KeyIdentity, responses={s: PROBLEMS[s] for s in (401, 429)})
async def me(request: Request) -> KeyIdentity:
    """The presented key's id, scopes and, for a personal key, the reviewer it belongs to (any valid key)."""
    key = authorize(request, None)
    return KeyIdentity(key_id=key.key_id, scopes=sorted(key.scopes), reviewer=key.reviewer,
                       review_requires_personal_key=request.app.state.review_requires_personal_key)
