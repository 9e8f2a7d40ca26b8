import os
import tempfile

import pytest

# Never reach a W&B server from tests; keep its files out of the tree.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="distlearn-wandb-"))
os.environ["WANDB_SILENT"] = "true"
os.environ["HF_HUB_OFFLINE"] = "1"

from dist_pool import Pool  # noqa: E402


@pytest.fixture(scope="session")
def dist_pool():
    """Real gloo process groups of 1-4 ranks, started once per session."""
    pool = Pool()
    yield pool
    pool.close()
