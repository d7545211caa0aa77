import json

import pytest

from backends.devices import select_strategy
from registry.errors import UsageError


def test_cpu_and_auto_strategies_build_on_this_machine():
    assert "cpu" in str(select_strategy("cpu").extended.worker_devices[0]).lower()
    assert select_strategy("auto") is not None


@pytest.mark.parametrize("device", ["gpu", "multi-gpu", "tpu", "quantum"])
def test_unavailable_devices_fail_with_a_usage_error(device, monkeypatch):
    import tensorflow as tf

    if device in ("gpu", "multi-gpu") and tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present")
    with pytest.raises(UsageError):
        select_strategy(device)


def test_multiworker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(UsageError, match="TF_CONFIG"):
        select_strategy("multiworker")
    monkeypatch.setenv("TF_CONFIG", "not json")
    with pytest.raises(UsageError, match="cluster"):
        select_strategy("multiworker")


def test_multiworker_with_a_one_worker_cluster(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    # Collective ops must be configured before TensorFlow starts: a fresh process.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = {"cluster": {"worker": [f"127.0.0.1:{port}"]}, "task": {"type": "worker", "index": 0}}
    code = "from backends.devices import select_strategy; print(select_strategy('auto').num_replicas_in_sync)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CONFIG": json.dumps(config)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "1"
