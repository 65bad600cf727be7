"""Debian's Chromium as the browser tests start it (never a browser playwright downloads): headless,
and with the background traffic off that this machine's closed network would refuse."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
