"""`gpt2reg ui` serves the MLflow UI and API on the home's stores."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ui_lists_the_registered_variants(family_home):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "registry.cli", "ui", "--home", str(family_home), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/registered-models/search"
        deadline = time.monotonic() + 120
        names = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    names = sorted(m["name"] for m in json.load(response)["registered_models"])
                    break
            except OSError:
                time.sleep(0.5)  # the server is still starting
        from registry import Registry

        expected = sorted({v.name for v in Registry(family_home).list()})
        assert {"base", "base-finetune"} <= set(expected)
        assert names == expected, server.stderr.read().decode()[-2000:] if server.poll() is not None else names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
