"""Thread pools that let Ctrl-C through.

``with ThreadPoolExecutor(...)`` waits for every running task when its block raises, so a
KeyboardInterrupt in the calling thread took effect only after the tasks in flight had
finished: minutes for a fold fit of a large store. :func:`thread_pool` waits on a normal exit
only; when the block raises it cancels the pending tasks and leaves the running ones to end in
the background (their results are dropped). The command line then exits at once
(``cli._app``: ``os._exit(130)`` when worker threads are still busy).
"""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def thread_pool(threads: int):
    """A ThreadPoolExecutor of ``threads`` that does not wait for its tasks when the block
    raises (KeyboardInterrupt, an error in one task): pending tasks are cancelled."""
    from concurrent.futures import ThreadPoolExecutor

    ex = ThreadPoolExecutor(threads)
    try:
        yield ex
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)
