"""The curated public API: ``__all__`` is complete, sorted, and every name resolves."""

from __future__ import annotations

import importlib
import pkgutil

import embedloom


def test_all_is_sorted_and_resolves() -> None:
    assert embedloom.__all__ == sorted(embedloom.__all__)
    for name in embedloom.__all__:
        assert getattr(embedloom, name) is not None


def test_every_public_error_and_the_engine_are_exported() -> None:
    from embedloom import errors

    for name in errors.__all__:
        assert name in embedloom.__all__, f"embedloom.{name} is not exported"
    for name in ("Embedder", "Engine", "Settings", "__version__"):
        assert name in embedloom.__all__


def test_every_module_declares_all_and_exports_what_it_defines() -> None:
    for module_info in pkgutil.walk_packages(embedloom.__path__, "embedloom."):
        if module_info.name.rsplit(".", 1)[-1].startswith("_"):
            continue
        module = importlib.import_module(module_info.name)
        assert hasattr(module, "__all__"), f"{module_info.name} has no __all__"
        for name in module.__all__:
            assert hasattr(module, name), f"{module_info.name}.__all__ names missing {name}"


def test_importing_embedloom_does_not_load_torch() -> None:
    import subprocess
    import sys

    code = "import sys, embedloom; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_cli_and_the_worker_launcher_load_no_library_that_reads_env_at_import() -> None:
    # The pre-forking master sets OPENBLAS_NUM_THREADS and PROMETHEUS_MULTIPROC_DIR
    # before these are imported; importing them earlier would make that too late.
    import subprocess
    import sys

    code = (
        "import sys, embedloom.cli, embedloom.server.workers; "
        "print(sorted(m for m in ('numpy', 'torch', 'prometheus_client') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
