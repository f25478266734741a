"""``make redis``: make sure the tests will have a Redis, installing redis-server when it can."""

from __future__ import annotations

import os
import shutil
import sys

from devtools.apt import apt_install
from devtools.stack import NO_REDIS_HELP, redis_answers
from promptq_core.contract import DEFAULT_REDIS_URL


def main() -> int:
    if shutil.which("redis-server"):
        return 0
    url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    if redis_answers(url):
        print(f"redis-server is not installed; the tests will use the Redis at {url} (database 15)")
        return 0
    if apt_install("redis-server", "redis-server"):
        return 0
    print(NO_REDIS_HELP.format(url=url), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
