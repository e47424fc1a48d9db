"""``streamad alerts``: inspect, retry, purge and deliver the webhook outbox."""

from __future__ import annotations

import argparse
import logging
import re
import time
from pathlib import Path

from streamad.cli.commands import UsageError

logger = logging.getLogger(__name__)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """Return the seconds of a duration such as ``90``, ``90s``, ``15m``, ``12h``, ``7d`` or ``2w``."""
    match = _DURATION.match(text)
    if match is None:
        raise UsageError(f"duration {text!r} is invalid; use a number with an optional unit s, m, h, d or w, e.g. 7d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def add_parser(subparsers) -> None:
    """Register the ``alerts`` sub-command and its actions."""
    parser = subparsers.add_parser(
        "alerts",
        help="list, retry, purge or deliver the events in a webhook outbox",
        description="Inspect and manage the SQLite outbox of webhook deliveries written by streamad run --outbox.",
    )
    actions = parser.add_subparsers(dest="alerts_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="print the pending, delivered or dead events", description="Print the events of the outbox, pending ones by default, oldest first.")
    listing.add_argument("--outbox", required=True, help="outbox SQLite file")
    state = listing.add_mutually_exclusive_group()
    state.add_argument("--dead", action="store_true", help="list the dead letters instead of the pending events")
    state.add_argument("--delivered", action="store_true", help="list the delivered events instead of the pending ones")
    listing.add_argument("--endpoint", help="only this endpoint (its table name, or the URL of a --webhook)")
    listing.add_argument("--limit", type=int, default=100, help="maximum rows to print (default 100)")
    listing.set_defaults(handler=list_rows)

    retry = actions.add_parser("retry", help="move dead letters back to pending", description="Move dead letters back to pending with no attempts; a running daemon delivers them within a second.")
    retry.add_argument("--outbox", required=True, help="outbox SQLite file")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", type=int, action="append", dest="ids", help="id of a dead letter, as printed by list --dead (repeatable)")
    which.add_argument("--all", action="store_true", help="every dead letter")
    retry.set_defaults(handler=retry_rows)

    purge = actions.add_parser(
        "purge",
        help="delete delivered events or dead letters",
        description="Delete delivered events and/or dead letters. Pending events are never deleted. A deleted delivered event is delivered again if the daemon re-emits it.",
    )
    purge.add_argument("--outbox", required=True, help="outbox SQLite file")
    purge.add_argument("--delivered", action="store_true", help="delete delivered events")
    purge.add_argument("--dead", action="store_true", help="delete dead letters")
    purge.add_argument("--older-than", default="0", help="only rows delivered or dead for longer than this duration, e.g. 7d, 12h, 30m or 90s (default 0: all)")
    purge.set_defaults(handler=purge_rows)

    send = actions.add_parser(
        "send",
        help="deliver the pending events without the daemon, then exit",
        description=(
            "Run the webhook senders alone until the outbox has no pending event of the configured endpoints, "
            "or --timeout-s passes. The endpoints come from --webhook and the config file's [webhooks.<name>] "
            "tables and webhook_* options, as for streamad run. Exits 0 when every pending event was delivered, "
            f"1 when some are still pending after --timeout-s, and {EXIT_DEAD_LETTERS} when this run moved any event to the "
            "dead letters, for example because the receiver rejected it with an HTTP 4xx status."
        ),
    )
    send.add_argument("--outbox", help="outbox SQLite file (default: outbox of the config file)")
    send.add_argument("--config", help="TOML config file of streamad run")
    send.add_argument("--webhook", action="append", default=[], help="endpoint URL (repeatable)")
    send.add_argument("--timeout-s", type=float, default=60.0, help="maximum seconds to deliver before giving up (default 60)")
    send.set_defaults(handler=send_pending)


def _open(path: str):
    from connectors.outbox import Outbox

    if not Path(path).is_file():
        raise UsageError(f"outbox {path!r} not found; pass the --outbox file of streamad run")
    return Outbox(path)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def list_rows(args) -> int:
    """Print the rows of one state as tab-separated columns, then the counts of every state."""
    if args.limit < 1:
        raise UsageError(f"--limit {args.limit} is invalid; use a count >= 1")
    state = "pending"
    if args.dead:
        state = "dead"
    elif args.delivered:
        state = "delivered"
    outbox = _open(args.outbox)
    try:
        rows = outbox.rows(state, endpoint=args.endpoint, limit=args.limit)
        counts = outbox.counts()
    finally:
        outbox.close()
    now = time.time()
    print("id\tendpoint\talert_id\tsequence\tattempts\tage\tlast_error")
    for row in rows:
        error = (row.last_error or "").replace("\t", " ").replace("\n", " ")
        print(f"{row.id}\t{row.endpoint}\t{row.alert_id}\t{row.sequence}\t{row.attempts}\t{_age(now - row.created_at)}\t{error}")
    print(f"{counts['pending']} pending, {counts['delivered']} delivered, {counts['dead']} dead")
    return 0


def retry_rows(args) -> int:
    """Move the chosen dead letters back to pending and print how many moved."""
    outbox = _open(args.outbox)
    try:
        moved = outbox.retry(None if args.all else args.ids)
    finally:
        outbox.close()
    print(f"moved {moved} dead letter(s) back to pending")
    if args.ids and moved < len(args.ids):
        print(f"{len(args.ids) - moved} id(s) were not dead letters; check them with streamad alerts list --dead")
        return 1
    return 0


def purge_rows(args) -> int:
    """Delete delivered rows and/or dead letters older than --older-than and print the counts."""
    if not (args.delivered or args.dead):
        raise UsageError("purge needs --delivered, --dead or both; pending events are never purged")
    older_than_s = parse_duration(args.older_than)
    outbox = _open(args.outbox)
    try:
        counts = outbox.purge(args.delivered, args.dead, older_than_s)
    finally:
        outbox.close()
    print(f"purged {counts['delivered']} delivered and {counts['dead']} dead row(s)")
    return 0


# Exit status of ``alerts send`` when the run moved events to the dead letters. Status 2 is argparse's usage error.
EXIT_DEAD_LETTERS = 3


def send_pending(args) -> int:
    """Deliver the pending events of the configured endpoints until none is left or the timeout passes."""
    from connectors.outbox import Outbox
    from connectors.webhook import WebhookSink
    from streamad.cli import build_parser
    from streamad.cli.config import check_webhooks, load_run_config, run_options

    if not args.timeout_s > 0:
        raise UsageError(f"--timeout-s {args.timeout_s} is invalid; use seconds > 0")
    # The run parser's defaults, overridden by the config file and the environment, as for streamad run.
    run_parser = build_parser().run_parser
    values = {dest: action.default for dest, action in run_options(run_parser).items()}
    values.update(load_run_config(args.config, run_parser))
    values["webhook"] = list(values.get("webhook") or []) + list(args.webhook)
    values["config"] = args.config
    if args.outbox:
        values["outbox"] = args.outbox
    settings = argparse.Namespace(**values)
    endpoints = check_webhooks(settings)
    if not endpoints:
        raise UsageError("no webhook endpoint; pass --webhook URL or a --config file with [webhooks.<name>] tables")
    if not Path(settings.outbox).is_file():
        raise UsageError(f"outbox {settings.outbox!r} not found; pass the --outbox file of streamad run")

    names = [endpoint.name for endpoint in endpoints]
    outbox = Outbox(settings.outbox)
    try:
        pending_before = sum(outbox.backlog(name) for name in names)
        dead_before = sum(outbox.dead_count(name) for name in names)
    finally:
        outbox.close()

    sink = WebhookSink(endpoints, settings.outbox, keep_delivered_s=0, poll_interval_s=0.2)
    sink.close(drain_s=args.timeout_s)

    outbox = Outbox(settings.outbox)
    try:
        remaining = sum(outbox.backlog(name) for name in names)
        other = outbox.backlog() - remaining
        dead = sum(outbox.dead_count(name) for name in names) - dead_before
    finally:
        outbox.close()
    # The counts are differences between before and after, so an "alerts retry" during the run skews them.
    delivered = max(pending_before - remaining - dead, 0)
    print(f"{delivered} delivered, {dead} moved to the dead letters, {remaining} still pending")
    if other:
        print(f"{other} pending event(s) belong to endpoints that are not configured here")
    if dead:
        print(f"{dead} event(s) moved to the dead letters; see streamad alerts list --dead, then streamad alerts retry")
        return EXIT_DEAD_LETTERS
    if remaining:
        print(f"{remaining} event(s) still pending after {args.timeout_s:g} s; see streamad alerts list")
        return 1
    print("every pending event of the configured endpoints was delivered")
    return 0
