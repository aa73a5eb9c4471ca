"""Run several ``visalign`` commands in one ``accelerate launch`` (one process start-up for
all of them): ``python _sharded_driver.py SPEC.json`` where SPEC is a JSON list of argv lists.
Exits with the first non-zero return code."""

from __future__ import annotations

import json
import sys

from visalign.cli import main

if __name__ == "__main__":
    for argv in json.loads(open(sys.argv[1], encoding="utf-8").read()):
        rc = main(argv)
        if rc:
            sys.exit(rc)
