"""Device strategies (`tf.distribute`) by name: auto, cpu, gpu, multi-gpu, multiworker, tpu.

Example:
    >>> from backends.devices import select_strategy
    >>> with select_strategy("cpu").scope():
    ...     ...  # build or load the model here
"""

from __future__ import annotations

import json
import os

from registry.errors import UsageError

DEVICES = ("auto", "cpu", "gpu", "multi-gpu", "multiworker", "tpu")


def uses_cluster(device: str) -> bool:
    """Whether `device` runs this process as one worker of a multi-worker cluster."""
    return device == "multiworker" or (device == "auto" and "TF_CONFIG" in os.environ)


def is_chief() -> bool:
    """Whether this process is the cluster's chief: the one worker that writes results.

    As tf.distribute decides it: the task of type "chief", or worker 0 when the
    cluster has no chief. Without TF_CONFIG a process is its own chief.
    """
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        return True
    task = config.get("task") or {}
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in config.get("cluster", {})


def select_strategy(device: str):
    import tensorflow as tf

    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose one of: {', '.join(DEVICES)}")
    if device == "auto" and "TF_CONFIG" in os.environ:
        device = "multiworker"
    # Physical, not logical, devices: listing logical ones starts the TensorFlow context,
    # after which a multi-worker strategy can no longer configure its collective ops.
    gpus = [f"/gpu:{index}" for index, _ in enumerate(tf.config.list_physical_devices("GPU"))]
    if device == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy(gpus)
        if len(gpus) == 1:
            return tf.distribute.OneDeviceStrategy(gpus[0])
        return tf.distribute.get_strategy()  # the default: whatever device TensorFlow places on
    if device == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0")
    if device == "gpu":
        if not gpus:
            raise UsageError("--device gpu: no GPU is visible to TensorFlow; use --device cpu or auto")
        return tf.distribute.OneDeviceStrategy(gpus[0])
    if device == "multi-gpu":
        if len(gpus) < 2:
            raise UsageError(f"--device multi-gpu needs at least 2 GPUs, {len(gpus)} visible; use --device gpu or auto")
        return tf.distribute.MirroredStrategy(gpus)
    if device == "multiworker":
        config = os.environ.get("TF_CONFIG")
        if not config:
            raise UsageError("--device multiworker needs TF_CONFIG (the cluster and this worker's task) in the environment")
        try:
            json.loads(config)["cluster"]
        except (ValueError, KeyError, TypeError):
            raise UsageError("TF_CONFIG is not JSON with a 'cluster' entry; see tf.distribute.MultiWorkerMirroredStrategy") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    # tpu
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise UsageError(f"--device tpu: no TPU found ({str(error).splitlines()[0][:120]}); use --device auto") from None
    return tf.distribute.TPUStrategy(resolver)
