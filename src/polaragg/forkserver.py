"""Imported last by the fork server of the `processes` executor (`executors.FORKSERVER_PRELOAD`).

Importing it moves every object the fork server has made so far, the task modules and the libraries
they import, into the garbage collector's permanent generation (`gc.freeze`). Collections in the
workers forked from the server then skip those objects, which saves CPU time in every task, and the
pages holding them stay shared with the server instead of being copied by the collector's writes.
The per-process timings of the hot path (which inflater, which sort) are made here once, and every
worker inherits them.
"""

import gc

from polaragg.chunks import inflate_name
from polaragg.stats import key_sort_kind

inflate_name()
key_sort_kind()
gc.freeze()
