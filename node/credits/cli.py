"""``poolai credits``: this node's earned and spent credits, and its statement for payouts.

    poolai credits                         totals, payout address and the latest receipts
    poolai credits --json                  the same document as GET /api/credits
    poolai credits --export csv -o FILE    the statement, one row per receipt (or json)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from poolai.mesh.short_ids import short_id
from poolai.node import config as config_mod
from poolai.node.cli.errors import CliError
from poolai.node.cli.local_api import fetch_local

SHOWN_ROWS = 10


def register(sub: Any) -> None:
    """Add the ``credits`` command to the ``poolai`` subparsers."""
    p = sub.add_parser("credits", help="show this node's credits, or export its statement")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p.add_argument("--export", choices=["csv", "json"], help="write the statement in this format")
    p.add_argument("-o", "--output", type=Path, help="with --export: write to FILE (default stdout)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the node")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.output is not None and args.export is None:
        raise CliError("-o/--output needs --export csv or --export json")
    cfg = config_mod.load(args.data_dir, {})
    doc = fetch_local(cfg.data_dir, "/api/credits", args.timeout)
    if args.export:
        _export(doc, args.export, args.output)
        return 0
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"earned:   {doc['earned']:.3f} credits")
    print(f"spent:    {doc['spent']:.3f} credits")
    print(f"balance:  {doc['balance']:.3f} credits   (queue priority {doc['priority']:+d})")
    print(f"receipts: {doc['receipts']} counted here, {doc['ledger']['held']} held in the ledger, "
          f"{doc['ledger']['pending']} awaiting a signature")
    print(f"payout:   {doc['payout_address'] or '(none set: payout_address in config.toml)'}")
    rows = doc["statement"][-SHOWN_ROWS:]
    if rows:
        print(f"latest {len(rows)} of {len(doc['statement'])} receipt(s):")
        for r in rows:
            print(f"  {r['direction']:<6} {r['credits']:>+12.3f}  {r['kind']:<7} "
                  f"{r['job_or_epoch'][:20]:<20} {short_id(r['counterparty'])}")
    return 0


def _export(doc: dict[str, Any], fmt: str, output: Path | None) -> None:
    from poolai.node.credits.api import statement_csv

    text = statement_csv(doc["statement"]) if fmt == "csv" else json.dumps(doc, indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        raise CliError(f"cannot write {output}: {exc.strerror}") from None
    print(f"wrote {len(doc['statement'])} receipt(s) to {output}", file=sys.stderr)
