"""`kakeya sessions`: the caller's sessions on a running runtime, one line each.

Prints what ListSessions answers for the API key given (every session when the runtime has no
keys), oldest first: id, busy or idle, history length, KV bytes held, idle seconds and label.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from .client import DEFAULT_ADDRESS, Client
from .errors import KakeyaError, RuntimeUnavailableError
from .types import SessionSummary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=DEFAULT_ADDRESS,
                        help=f"the runtime, host:port or unix:/path [default {DEFAULT_ADDRESS}]")
    parser.add_argument("--api-key", default=os.environ.get("KAKEYA_API_KEY"),
                        help="API key whose sessions to list [env KAKEYA_API_KEY]")


def format_line(entry: SessionSummary) -> str:
    """One line, whatever the label holds: it is printed quoted, its escapes kept."""
    return (f"{entry.session_id} {'busy' if entry.busy else 'idle'} history={entry.history_length} "
            f"kv_bytes={entry.kv_live_bytes} idle_s={entry.idle_seconds:.1f} label={entry.client_label!r}")


def run(args: argparse.Namespace) -> int:
    """Prints the listing; returns the process exit code."""
    try:
        entries = asyncio.run(_list(args.address, args.api_key))
    except RuntimeUnavailableError as exc:
        return _fail(f"the runtime at {args.address} is not reachable ({exc.message}); "
                     "start it with `kakeya serve` or pass --address")
    except KakeyaError as exc:
        return _fail(f"{type(exc).__name__}: {exc.message}")
    except KeyboardInterrupt:
        return 130
    for entry in entries:
        print(format_line(entry))
    return 0


def _fail(message: str) -> int:
    print(f"kakeya sessions: {message}", file=sys.stderr)
    return 1


async def _list(address: str, api_key: str | None) -> list[SessionSummary]:
    async with Client(address, api_key=api_key) as client:
        return await client.list_sessions()
