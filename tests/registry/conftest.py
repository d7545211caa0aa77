"""Fixtures of the store tests that run many worker processes."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from tests.conftest import REPO
from tests.registry import store_only_plugin


@pytest.fixture(scope="module")
def forkserver():
    """A `multiprocessing` context whose workers fork from a server that has imported the store.

    The server is a fresh interpreter: on Python 3.11 it is not given the parent's
    `sys.path`, so PYTHONPATH names the repository, or the preload would fail
    silently and every worker would import MLflow again (seconds each).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(store_only_plugin.PRELOAD)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        yield context
