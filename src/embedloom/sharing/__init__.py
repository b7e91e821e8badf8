"""Who runs a batch, on which thread: the model-sharing strategies and the thread budget.

A model cannot simply be called from every request thread, so the engine
hands batches to a worker that owns the model(s). A worker knows nothing of
asyncio or requests: it takes ``BatchJob``s and reports each outcome through
the job. Three strategies implement the same ``InferenceWorker`` protocol:

- ``dedicated``: one inference thread owns one model and gets the whole thread
  budget for its intra-op pool. One device, one feeder: the choice for a GPU.
- ``replicas``: K inference threads, each owning its own model instance (the
  thread-local pattern), each with budget ÷ K intra-op threads; a batch goes to
  whichever replica is idle.
- ``locked``: one model behind a lock, each request run alone by one of a few
  request threads. The naive pattern, kept as a baseline and for models that
  cannot batch.

What torch's thread setting does with several inference threads (measured
on torch 2.13, OpenMP backend, 2 cores; benchmarks and the README have the
figures): ``torch.set_num_threads(n)`` sets a process-wide value, but the pool
it sizes is per calling thread. Every Python thread that runs torch ops
becomes the master of its own OpenMP team of n threads, so K inference threads
with n each run K × n compute threads: with n=2 and K=2 we counted four busy
OS threads on two cores. Hence replicas get budget ÷ K each, and
``compute_threads`` (what the backend reports from inside its own thread) is
what the statistics show, not what was asked for. Tokenising runs on the
offload threads, one request at a time and without the tokenizers library's
own thread pool (see ``backends/torch.py``).
"""

from embedloom.sharing.plan import SharingPlan, Strategy, plan_sharing, worker_budget
from embedloom.sharing.worker import (
    BatchJob,
    BatchSpan,
    InferenceWorker,
    ThreadedWorker,
    ThreadFault,
    WorkerStatistics,
    build_worker,
)

__all__ = [
    "BatchJob",
    "BatchSpan",
    "InferenceWorker",
    "SharingPlan",
    "Strategy",
    "ThreadFault",
    "ThreadedWorker",
    "WorkerStatistics",
    "build_worker",
    "plan_sharing",
    "worker_budget",
]
