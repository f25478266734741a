"""``make browser``: make sure the page test has a headless Chromium, installing Debian's when it can.

Playwright drives the system's Chromium (its own browser download is not used), started with
flags that keep it off the network: --no-sandbox (root in a container), --disable-gpu,
--disable-quic, --no-first-run, --disable-background-networking, --disable-component-update and
--disable-sync (see tests/integration/test_page.py).
"""

from __future__ import annotations

import shutil
import sys

from devtools.apt import apt_install

HELP = "the page test needs Chromium: install Debian's `chromium` package (or put a chromium binary on PATH)"


def main() -> int:
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        return 0
    if apt_install("chromium", "chromium"):
        return 0
    print(HELP, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
