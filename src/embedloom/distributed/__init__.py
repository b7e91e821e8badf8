"""Scale-out on Ray (the ``ray`` extra): batch embedding on Ray Data, serving on Ray Serve.

Both run the same engine as one machine does, one per Ray actor or Serve
replica, with a thread budget from the CPUs Ray gives it.
"""

from typing import TYPE_CHECKING

from embedloom._lazy import lazy_exports

if TYPE_CHECKING:
    from embedloom.distributed.data import embed_dataset
    from embedloom.distributed.serving import serve_app

__all__ = ["embed_dataset", "serve_app"]

__getattr__ = lazy_exports(
    __name__,
    {
        "embed_dataset": "embedloom.distributed.data",
        "serve_app": "embedloom.distributed.serving",
    },
)
