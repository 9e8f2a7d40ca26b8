import os
import tempfile

import pytest

# Never reach a W&B server from tests; keep its files out of the tree.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="distlearn-wandb-"))
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"
# One intra-op thread here too, as in every launched process: the tests' tensors are tiny, and on a busy
# 2-core machine a second spinning thread per process made steps many times slower.
os.environ["OMP_NUM_THREADS"] = "1"

import cpu_clock  # noqa: E402
import launching  # noqa: E402
from dist_pool import Pool  # noqa: E402

launching.WARM = True  # one-process launches fork from the session's fork server (tests/warm.py)
pytest_addoption = cpu_clock.pytest_addoption  # --cpu-clock: CPU time by file and test, child processes included
pytest_configure = cpu_clock.pytest_configure


@pytest.fixture(scope="session", autouse=True)
def _fork_server():
    """Stop the session's fork server last and wait for it, so that the CPU time of everything forked
    from it (the pool's ranks, warm launches) counts in the session's children (``time make test``)."""
    yield
    from multiprocessing import forkserver

    forkserver._forkserver._stop()


@pytest.fixture(scope="session")
def dist_pool():
    """Real gloo process groups of 1-4 ranks, started once per session."""
    pool = Pool()
    yield pool
    pool.close()


def reset_accelerate() -> None:
    """Forget Accelerate's process-wide state (the Accelerator singleton and its gradient state)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def distlearn_logger_restored():
    """A command run in this process (``main([...])``) sets up distlearn's console logger, which stops
    propagating: put it back, so that later tests' ``caplog`` sees distlearn's records."""
    import logging

    logger = logging.getLogger("distlearn")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:], logger.propagate = handlers, propagate
    logger.setLevel(level)


@pytest.fixture
def fresh_accelerate():
    """Accelerate keeps process-wide state; give each in-process test its own and leave none behind.

    Yields the reset function, for a test that builds several Accelerators in turn.
    """
    reset_accelerate()
    yield reset_accelerate
    reset_accelerate()
