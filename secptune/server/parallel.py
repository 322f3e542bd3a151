"""The server's independent preparation jobs side by side: Python threads, one torch thread each.

Why: preparation is many small jobs that do not depend on each other (one RFA fit per layer,
one damage pass per layer), and their tensors are too small for torch's intra-op threads to
keep two cores busy: on the 2-core CPU a SmolLM2-sized layer fit ran 1.3x faster on two
intra-op threads than on one, but two fits side by side, one thread each, finished both in 1.06x
the time of one (1.4x the throughput of one fit at a time on two threads).
torch's kernels release the GIL, so threads are enough: no copy of the captured inputs, and
no fork after threaded torch work (which has deadlocked here: mpc.launcher).  Each job's
result is what it computes alone (one thread, the same ops).
"""

from __future__ import annotations

from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

import torch
from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def map_jobs(job: Callable[[T], R], items: Sequence[T], desc: str, unit: str, show: bool = True) -> list[R]:
    """``[job(x) for x in items]``, as many at a time as torch has threads (each on one thread),
    with a progress bar.  The first failure stops the jobs not yet started and is raised."""
    threads = torch.get_num_threads()
    workers = min(threads, len(items))
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not show) as bar:
        if workers <= 1:
            out = []
            for item in items:
                out.append(job(item))
                bar.update()
            return out
        torch.set_num_threads(1)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="prepare")
        try:
            futures = [pool.submit(job, item) for item in items]
            for future in futures:
                future.add_done_callback(lambda _: bar.update())
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and future.exception() is not None:  # none is cancelled before `finally`
                    raise future.exception()
            return [future.result() for future in futures]
        finally:  # on a failure or an interrupt: no new job starts; those running finish theirs
            pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(threads)
