"""CURVE key files for every socket, in one folder made by `fusetomo keys DIR`:

    DIR/instrument.key, instrument.key_secret   the instrument (server of its ROUTER)
    DIR/controller.key, controller.key_secret   the controller (client of the instrument;
                                                server of its status PUB and operator ROUTER)
    DIR/viewer.key, viewer.key_secret           viewers and panels (clients of the controller)
    DIR/controllers/controller.key              public keys the instrument accepts
    DIR/viewers/viewer.key                      public keys the controller accepts

`keys_for(DIR, role)` gives each role its `CurveKeys`. Copy the folder (or just the files a
machine needs: its secret key, the public keys it checks against) to each machine. Secret
key files are made readable by their owner only.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq.auth

from fusetomo.adapters.transport import CurveKeys
from fusetomo.core.errors import FusetomoError

ROLES = ("instrument", "controller", "controller-server", "viewer")


class KeysError(FusetomoError, ValueError):
    """A keys folder that cannot be made or lacks a file a role needs."""


def make_keys(folder: str | Path, *, overwrite: bool = False) -> dict[str, Path]:
    """Make the key pairs and the folders of accepted public keys; returns the files."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise KeysError(f"{folder}: not empty; choose a new folder (or overwrite=True)")
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for name in ("instrument", "controller", "viewer"):
        public, secret = zmq.auth.create_certificates(str(folder), name)
        os.chmod(secret, 0o600)
        out[name], out[f"{name}_secret"] = Path(public), Path(secret)
    for sub, name in (("controllers", "controller"), ("viewers", "viewer")):
        (folder / sub).mkdir(exist_ok=True)
        target = folder / sub / f"{name}.key"
        target.write_bytes(out[name].read_bytes())
        out[sub] = folder / sub
    return out


def keys_for(folder: str | Path, role: str) -> CurveKeys:
    """The `CurveKeys` of `role` (instrument, controller, controller-server, viewer) in a
    folder made by `make_keys`; KeysError naming a missing file."""
    folder = Path(folder)
    table = {
        "instrument": ("instrument.key_secret", None, "controllers"),
        "controller": ("controller.key_secret", "instrument.key", None),
        "controller-server": ("controller.key_secret", None, "viewers"),
        "viewer": ("viewer.key_secret", "controller.key", None),
    }
    if role not in table:
        raise KeysError(f"unknown role {role!r}; one of {list(ROLES)}")
    secret, server, clients = table[role]
    for name in (secret, server, clients):
        if name is not None and not (folder / name).exists():
            raise KeysError(f"{folder / name}: missing (make the folder with `fusetomo keys "
                            f"{folder}`)")
    return CurveKeys(folder / secret, server_public_file=None if server is None
                     else folder / server,
                     authorized_clients_dir=None if clients is None else folder / clients)
