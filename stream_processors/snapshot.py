"""A learner's checkpoint bytes, pickled in a forked child so the worker's event loop keeps running.

``pickle.dumps`` holds the GIL from start to end. The fraud learner carries a minute of merged
orders and every scored order waiting for its label: at a steady 5k orders/s its checkpoint took
~2.5 s of the fraud thread in 35 s (py-spy, ``benchmarks/freshness.py --workers 2``), and for
that long the worker's Faust event loop could not run — the ~2.5 s tail of the worker stage in
that benchmark. :func:`snapshot` forks: the child (a copy-on-write image of this instant, with
only the calling thread) pickles and compresses the object and writes the bytes to a pipe; the
parent reads them without the GIL. The bytes are the ones :func:`blob` gives in-process; the
caller writes and commits exactly as before.

Where ``os.fork`` does not exist, or the child fails, the work is done in-process (a child's
failure is then raised here with its real traceback).
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any

import cramjam

__all__ = ["blob", "snapshot"]

log = logging.getLogger(__name__)


def blob(obj: Any) -> bytes:
    """LZ4 of the pickle of ``obj`` (the checkpoint format), in this process."""
    return bytes(cramjam.lz4.compress(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)))


def snapshot(obj: Any) -> bytes:
    """:func:`blob` of ``obj`` as it is now, computed in a forked child (see the module doc).

    Call it from the thread that owns ``obj`` (nothing may change it during the fork).
    """
    if not hasattr(os, "fork"):
        return blob(obj)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only this thread exists here; never return into the caller
        code = 1
        try:
            os.close(r)
            view = memoryview(blob(obj))
            while view:
                view = view[os.write(w, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        data = pipe.read()  # blocking reads release the GIL: the event loop runs meanwhile
    _, status = os.waitpid(pid, 0)
    if status != 0:
        log.warning("checkpoint child %d failed (status %d); pickling in-process", pid, status)
        return blob(obj)
    return data
