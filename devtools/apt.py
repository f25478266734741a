"""Installing a Debian package for the tests, when this runs as root on a machine with apt-get."""

from __future__ import annotations

import os
import shutil
import subprocess

__all__ = ["apt_install"]


def apt_install(package: str, binary: str) -> bool:
    """Install ``package`` with apt-get if possible; True once ``binary`` is on PATH."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    print(f"installing {package} with apt-get...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    done = subprocess.run(["apt-get", "install", "-y", "-qq", package], check=False, env=env)
    return done.returncode == 0 and shutil.which(binary) is not None
