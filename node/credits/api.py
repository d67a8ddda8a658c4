"""The credits section of the local API, and the statement a payout is made from.

``GET /api/credits``: this node's totals (the same dict as the ``credits`` section of
``/api/status``) plus ``statement``, one row per counted receipt it is party to;
``?format=csv`` returns the statement alone as CSV. ``GET /api/credits/balances``:
every peer's account as the receipts this node holds prove it, in millicredits.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from poolai.node.credits.receipts import EPOCH_S, MILLI, Checked, JobClaim

if TYPE_CHECKING:
    from poolai.node.credits.service import CreditsService

STATEMENT_FIELDS = ("time", "receipt_id", "kind", "direction", "counterparty", "job_or_epoch",
                    "device_class", "quantity", "unit", "credits")


def statement_rows(receipts: Sequence[Checked], me: str) -> list[dict[str, Any]]:
    """One row per receipt ``me`` is party to: what it earned (+) or spent (-), oldest first."""
    rows = []
    for c in receipts:
        earned = c.earner == me
        claim = c.claim
        if isinstance(claim, JobClaim):
            when, subject, device = claim.finished_at, claim.job_id, claim.device_class
            quantity, unit = round(claim.seconds, 3), f"{claim.device}-seconds"
        else:
            when, subject, device = float(claim.epoch * EPOCH_S), str(claim.epoch), ""
            quantity, unit = claim.bytes_held, "byte-hours"
        rows.append({"time": when, "receipt_id": c.receipt_id.hex(), "kind": c.kind,
                     "direction": "earned" if earned else "spent",
                     "counterparty": c.payer if earned else c.earner, "job_or_epoch": subject,
                     "device_class": device, "quantity": quantity, "unit": unit,
                     "credits": (c.credit if earned else -c.credit) / MILLI})
    rows.sort(key=lambda r: (r["time"], r["receipt_id"]))
    return rows


def statement_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The statement as CSV with a header line (what ``poolai credits --export csv`` writes)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=STATEMENT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return out.getvalue()


def credits_document(service: CreditsService) -> dict[str, Any]:
    """What ``GET /api/credits`` (and ``poolai credits --json``) returns."""
    rows = statement_rows(service.tally.receipts_of(service.peer_id), service.peer_id)
    return {**service.status(), "statement": rows}


def routes(service: CreditsService) -> list[Route]:
    async def get_credits(request: Request) -> Response:
        """This node's credits and statement (``?format=csv``: the statement as CSV)."""
        document = credits_document(service)
        fmt = request.query_params.get("format", "json")
        if fmt == "csv":
            return Response(statement_csv(document["statement"]), media_type="text/csv",
                            headers={"content-disposition": "attachment; filename=credits.csv"})
        if fmt != "json":
            return JSONResponse({"error": "format is json or csv"}, 400)
        return JSONResponse(document)

    async def get_balances(request: Request) -> JSONResponse:
        """Every peer's account, from the receipts this node holds (millicredits)."""
        accounts = service.tally.accounts()
        return JSONResponse({"balances": {
            peer: {"earned_milli": a.earned, "spent_milli": a.spent, "balance_milli": a.balance,
                   "receipts": a.receipts} for peer, a in sorted(accounts.items())}})

    return [Route("/api/credits", get_credits), Route("/api/credits/balances", get_balances)]
