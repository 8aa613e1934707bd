"""Reading ahead on background threads (one or several generators)."""

from __future__ import annotations


def _prefetch(gen, depth: int = 2):
    """Run a batch generator on a background thread (Arrow parsing releases the GIL), so the
    next block is parsed while this one is validated; at most ``depth`` blocks are buffered."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work():
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((True, done))
        except BaseException as exc:  # re-raised in the consumer
            q.put((False, exc))

    th = threading.Thread(target=work, daemon=True)
    th.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while th.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                th.join(0.05)


def _prefetch_many(gens: list, depth: int = 2):
    """Like :func:`_prefetch` for several generators, each on its own thread; yields
    ``(index, item)`` in arrival order (each generator's items stay in order)."""
    if len(gens) == 1:
        for item in _prefetch(gens[0], depth):
            yield 0, item
        return
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth * len(gens))
    stop = threading.Event()
    done = object()

    def work(i, gen):
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put((i, True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((i, True, done))
        except BaseException as exc:
            q.put((i, False, exc))

    threads = [threading.Thread(target=work, args=(i, g), daemon=True) for i, g in enumerate(gens)]
    for th in threads:
        th.start()
    try:
        live = len(gens)
        while live:
            i, ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                live -= 1
                continue
            yield i, item
    finally:
        stop.set()
        while any(th.is_alive() for th in threads):
            try:
                q.get_nowait()
            except queue.Empty:
                for th in threads:
                    th.join(0.02)
