"""Browser tests drive the real Chromium (Debian's package) through Playwright against real services."""

from __future__ import annotations

from e2e.conftest import keys_dir, launch_ticketing  # noqa: F401 - the same process fixtures as e2e

CHROMIUM = "/usr/bin/chromium"
# The flags a sandboxed, offline machine needs: no background calls to Google's services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
