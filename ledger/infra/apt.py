"""Installing a missing Debian package, the way a fresh machine needs it.

Machines are not kept between sessions, so whatever the stack needs from
Debian it installs itself, once, and only when it is actually missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ledger.errors import InfrastructureError
from ledger.infra.procs import is_root, run_checked

# apt-get may wait on the dpkg lock or download a few hundred MB.
_APT_TIMEOUT_S = 900.0


def ensure_package(package: str, present: Callable[[], bool], needed_for: str) -> None:
    """Install ``package`` with apt-get unless ``present()`` already says it is there.

    ``apt-get update`` runs only if the first install attempt fails, since an
    update costs time and the package lists are usually fresh enough.
    """
    if present():
        return
    if not is_root():
        raise InfrastructureError(
            f"{needed_for} needs the Debian package {package}, which is not installed; "
            f"install it with: sudo apt-get install -y {package}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", package]
    try:
        run_checked(install, what=f"apt-get install {package}", env=env, timeout_s=_APT_TIMEOUT_S)
    except InfrastructureError:
        run_checked(["apt-get", "update"], what="apt-get update", env=env, timeout_s=_APT_TIMEOUT_S)
        run_checked(install, what=f"apt-get install {package}", env=env, timeout_s=_APT_TIMEOUT_S)
    if not present():
        raise InfrastructureError(
            f"apt-get installed {package}, but {needed_for} still cannot find it"
        )
