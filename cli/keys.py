"""`fusetomo keys DIR`: make the CURVE keys of every socket (adapters/keys.py), then give
`--keys DIR` to `instrument-sim`, `control` and `view` (each takes its own files):

    fusetomo keys ~/fusetomo-keys
    fusetomo instrument-sim --keys ~/fusetomo-keys ...
    fusetomo control --instrument tcp://HOST:PORT --record run.h5 --keys ~/fusetomo-keys
    fusetomo view --connect tcp://HOST:PORT --keys ~/fusetomo-keys

Every socket is then encrypted and authenticated: the instrument accepts only the
controller's key (so only it can say hello, pause or resume), the controller's status and
operator sockets only the viewers' key.
"""

from __future__ import annotations

import argparse
from typing import Any

from fusetomo.adapters.keys import make_keys


def cmd_keys(args: argparse.Namespace) -> int:
    files = make_keys(args.folder)
    for name in ("instrument", "controller", "viewer"):
        print(f"{name:>10}: {files[name]} (secret {files[f'{name}_secret']})")
    print(f"accepted by the instrument: {files['controllers']}; by the controller: "
          f"{files['viewers']}")
    print(f"use --keys {args.folder} with instrument-sim, control and view")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="make CURVE keys for authenticated, encrypted sockets",
                       description="Make key pairs for the instrument, the controller and "
                                   "the viewers, and the folders of the public keys each "
                                   "server accepts; then pass --keys DIR to instrument-sim, "
                                   "control and view.")
    p.add_argument("folder", metavar="DIR", help="a new (or empty) folder for the keys")
    p.set_defaults(func=cmd_keys)
