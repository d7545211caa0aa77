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


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Two logical CPU devices must be declared before TensorFlow starts: a fresh process.
MIRRORED_AGAINST_ONE_DEVICE = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from backends import keras_gpt2, training
from backends.configs import get_config
blocks = np.random.default_rng(0).integers(0, 400, size=(16, 17)).astype("int32")
plan = training.TrainingPlan(steps=4, batch_size=4, learning_rate=3e-3, seed=2)
curves = {}
for name, strategy in (("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
                       ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
    with strategy.scope():
        lm = keras_gpt2.build({**get_config("tiny"), "dropout": 0.0}, seed=0)
        report = training.train(lm, blocks, plan)
    curves[name] = [loss for _, loss in report.history["train_loss"]]
    curves[name + "_replicas"] = strategy.num_replicas_in_sync
print(json.dumps(curves))
"""


def test_mirrored_over_two_cpu_devices_trains_the_same_loss_curve_as_one_device():
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", MIRRORED_AGAINST_ONE_DEVICE], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    curves = json.loads(done.stdout.strip().splitlines()[-1])
    assert curves["mirrored_replicas"] == 2 and curves["one_replicas"] == 1
    assert curves["one"][-1] < curves["one"][0]  # it learns
    # The first updates agree to float precision; after that Adam's per-weight normalisation
    # amplifies the different order of the gradient sums (tiny gradients of unused vocabulary rows).
    assert curves["mirrored"][:2] == pytest.approx(curves["one"][:2], abs=1e-4)
    assert curves["mirrored"] == pytest.approx(curves["one"], abs=1e-2)


def test_two_workers_train_one_model_and_only_the_chief_records_it(tmp_path, text_file):
    import os
    import subprocess
    import sys

    from registry import Registry

    home = tmp_path / "home"
    Registry(home).create("base", config="tiny", seed=0)
    cluster = {"worker": [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]}
    args = ["finetune", "base/1", "--data", str(text_file), "--steps", "3", "--batch-size", "4", "--seq-len", "32",
            "--device", "multiworker", "--home", str(home), "--json"]
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "registry.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                 "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})},
        )
        for index in range(2)
    ]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    chief, other = (json.loads(out) for out, _ in outputs)
    assert chief["ref"] == "base-finetune/1" and chief["metrics"]["train_steps"] == 3
    assert other["recorded"] is False and other["metrics"]["train_steps"] == 3
    # One model: both workers hold the same weights, so they score the held-out split alike.
    assert other["metrics"]["perplexity"] == pytest.approx(chief["metrics"]["perplexity"], rel=1e-6)
    reg = Registry(home)
    assert sorted(v.ref for v in reg.list()) == ["base-finetune/1", "base/1"]
    assert len(reg.tracker.search_runs()) == 2  # base and the one fine-tune: the second worker logged nothing
