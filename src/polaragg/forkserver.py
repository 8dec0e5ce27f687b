"""Imported last by the fork server of the `processes` executor (`executors.FORKSERVER_PRELOAD`).

Importing it moves every object the fork server has made so far, the task modules and the libraries
they import, into the garbage collector's permanent generation (`gc.freeze`). Collections in the
workers forked from the server then skip those objects, which saves CPU time in every task, and the
pages holding them stay shared with the server instead of being copied by the collector's writes.
The per-process timings of the hot path (which inflater, which sort) are made here once, and every
worker inherits them, as it inherits the client's main script, imported here first when the client
named it (`executors.start_workers_early`).
"""

import gc
import json
import os
import sys
from multiprocessing import process, spawn

from polaragg.chunks import inflate_name
from polaragg.stats import key_sort_kind

_main = os.environ.pop("POLARAGG_FORKSERVER_MAIN", None)  # executors.MAIN_PATH_VARIABLE
if _main:
    # As multiprocessing imports it in a worker: with the client's argv and sys.path (the server's lacks
    # the script's folder), under `_inheriting` (a script that starts processes at import fails here as
    # it would there). The workers then find it imported. Should it fail, or exit, each worker imports
    # the script itself, as without this, and meets the same error.
    _main = json.loads(_main)
    _saved = sys.argv, sys.path[:]
    sys.argv, sys.path[:] = _main["argv"], _main["sys_path"]
    process.current_process()._inheriting = True
    try:
        spawn.import_main_path(_main["path"])
    except BaseException:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too: the workers report it
        pass
    finally:
        del process.current_process()._inheriting
        sys.argv, sys.path[:] = _saved
inflate_name()
key_sort_kind()
gc.freeze()
