"""`gpt2reg import NAME hf://org/repo` against a hub served from this machine.

The fake hub answers the calls huggingface_hub makes: the repository listing
(`/api/models/{repo}[/revision/{rev}]?blobs=true`: the commit, and each file's size,
git blob id and, for LFS files, sha256) and `HEAD`/`GET /{repo}/resolve/{rev}/{file}`
(X-Repo-Commit, ETag, X-Linked-Etag and X-Linked-Size, or a 302 to where the bytes
are, as the real hub sends its large files to a CDN). Every request is logged, so a
test can tell what the client fetched. Each import runs in a fresh `gpt2reg` process
with HF_ENDPOINT pointing at the fake hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO

HF_FILES = ("config.json", "vocab.json", "merges.txt", "model.safetensors", "tokenizer.json", "generation_config.json")


class FakeRepo:
    def __init__(self, files: dict[str, bytes], *, redirects: dict[str, str] | None = None, cut_short: tuple = (),
                 stalled: tuple = ()):
        self.files, self.redirects, self.cut_short, self.stalled = files, redirects or {}, set(cut_short), set(stalled)
        self.commit = hashlib.sha1(json.dumps(sorted(files)).encode()).hexdigest()

    def listing(self, name: str) -> dict:
        data = self.files[name]
        entry = {"rfilename": name, "size": len(data),
                 "blobId": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
        if name.endswith((".safetensors", ".bin")):  # stored in LFS, as the hub stores weights
            entry["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
        return entry


class FakeHub:
    """A hub (or a CDN: `blobs` served at their paths) on 127.0.0.1, in a thread."""

    def __init__(self):
        self.repos: dict[str, FakeRepo] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        # A stalled download: half its bytes sent (`stalled` is set), the rest never, until `released`.
        self.stalled, self.released = threading.Event(), threading.Event()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.answer(self, head=True)

            def do_GET(self):
                hub.answer(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def fetched(self, name: str) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.requests if path.split("?")[0].endswith("/" + name)]

    def answer(self, request, head: bool):
        path = request.path.split("?")[0]
        self.requests.append((request.command, request.path))
        if path in self.blobs:
            return self.send(request, 200, self.blobs[path], {}, head)
        if path.startswith("/api/models/"):
            repo_id = path[len("/api/models/"):].partition("/revision/")[0]
            if repo_id not in self.repos:
                return self.send(request, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head)
            repo = self.repos[repo_id]
            listing = {"id": repo_id, "sha": repo.commit, "siblings": [repo.listing(name) for name in repo.files]}
            return self.send(request, 200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, head)
        for repo_id, repo in self.repos.items():
            if path.startswith(f"/{repo_id}/resolve/"):
                name = path[len(f"/{repo_id}/resolve/"):].partition("/")[2]
                if name not in repo.files:
                    return self.send(request, 404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                listed = repo.listing(name)
                headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{listed["blobId"]}"'}
                if "lfs" in listed:
                    headers.update({"X-Linked-Etag": f'"{listed["lfs"]["sha256"]}"', "X-Linked-Size": str(listed["size"])})
                if name in repo.redirects:
                    return self.send(request, 302, b"", {**headers, "Location": repo.redirects[name]}, head)
                data = repo.files[name]
                if name in repo.stalled and not head:
                    return self.stall(request, data, headers)
                if name in repo.cut_short and not head:
                    data = data[: len(data) // 2]  # the connection's honest length, shorter than the hub declared
                return self.send(request, 200, data, headers, head)
        self.send(request, 404, b"", {"X-Error-Code": "RepoNotFound"}, head)

    def stall(self, request, data: bytes, headers: dict):
        request.send_response(200)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(data[: len(data) // 2])
        request.wfile.flush()
        self.stalled.set()
        self.released.wait(timeout=120)

    @staticmethod
    def send(request, status: int, body: bytes, headers: dict, head: bool):
        request.send_response(status)
        for key, value in headers.items():
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if not head:
            request.wfile.write(body)


@pytest.fixture(scope="module")
def checkpoint_files(fixture_dir) -> dict[str, bytes]:
    return {name: (fixture_dir / name).read_bytes() for name in HF_FILES}


@pytest.fixture
def hub():
    hub = FakeHub()
    yield hub
    hub.released.set()
    hub.close()


@pytest.fixture
def cdn():
    cdn = FakeHub()
    yield cdn
    cdn.close()


@pytest.fixture
def hub_env(tmp_path):
    """The environment of a `gpt2reg` process that talks to `endpoint`, with its own temp folder."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()

    def env(endpoint: str) -> dict:
        return {"HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home"),
                "HF_HUB_DISABLE_TELEMETRY": "1", "TMPDIR": str(scratch), "NO_PROXY": "127.0.0.1,localhost"}

    env.scratch = scratch
    return env


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _work_folders(scratch) -> list[str]:
    """The import's own temporary folders (the download's and the staging's) left in the temp folder."""
    return sorted(p.name for p in scratch.iterdir() if p.name.startswith("gpt2reg-"))


def _assert_refused_and_nothing_left(result, home, hub_env, gpt2reg, *phrases):
    assert result.code == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result
    for phrase in phrases:
        assert phrase in lines[0], result
    assert _work_folders(hub_env.scratch) == [], "a download folder was left behind"
    assert gpt2reg("list", "--json", "--home", home).json()["variants"] == []
    assert gpt2reg("doctor", "--json", "--home", home).json()["problems"] == []


def test_a_hub_repository_imports_pinned_checked_and_generates_the_reference(
        run_cli, gpt2reg, hub, cdn, hub_env, checkpoint_files, reference, tmp_path):
    # As on the real hub: the weights come through a redirect to another host, and a pickled
    # copy of them sits beside the safetensors (it must never be fetched).
    cdn.blobs["/blobs/weights"] = checkpoint_files["model.safetensors"]
    repo = FakeRepo({**checkpoint_files, "pytorch_model.bin": b"\x80\x04pickled weights"},
                    redirects={"model.safetensors": cdn.url + "/blobs/weights"})
    hub.repos["acme/tiny-gpt2"] = repo
    home = tmp_path / "home"

    result = run_cli("import", "tiny", "hf://acme/tiny-gpt2", "--json", "--home", home, env=hub_env(hub.url))

    assert result.code == 0, result
    assert result.stdout and json.loads(result.stdout)["ref"] == "tiny/1"
    assert hub.fetched("pytorch_model.bin") == []
    resolved = [path for _, path in hub.requests if "/resolve/" in path]
    assert resolved and all(f"/resolve/{repo.commit}/" in path for path in resolved), resolved
    assert cdn.fetched("weights") == [("GET", "/blobs/weights")]
    assert _work_folders(hub_env.scratch) == []
    # Where the files came from, in the variant's manifest and its MLflow run.
    shown = gpt2reg("show", "tiny", "--json", "--home", home).json()
    settings = json.loads((Path(shown["preset_path"]) / "gpt2reg.json").read_text())["settings"]
    assert settings["source"] == "hf://acme/tiny-gpt2" and settings["source_revision"] == "main"
    assert settings["source_commit"] == repo.commit
    assert settings["source_files"]["model.safetensors"] == hashlib.sha256(checkpoint_files["model.safetensors"]).hexdigest()
    params = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}").get_run(shown["run_id"]).data.params
    assert params["source_commit"] == repo.commit
    case = reference["cases"][0]
    generated = gpt2reg("generate", "tiny", case["text"], "--sampler", "greedy", "--max-new-tokens", 16, "--json",
                        "--home", home)
    assert generated.exit_code == 0, generated
    assert generated.json()["outputs"][0]["token_ids"] == case["greedy_16"]


def test_a_repository_with_only_pickled_weights_is_refused_before_any_download(
        run_cli, gpt2reg, hub, hub_env, checkpoint_files, tmp_path):
    files = {name: data for name, data in checkpoint_files.items() if name != "model.safetensors"}
    hub.repos["acme/pickled"] = FakeRepo({**files, "pytorch_model.bin": b"\x80\x04pickled weights"})
    home = tmp_path / "home"

    result = run_cli("import", "pickled", "hf://acme/pickled", "--home", home, env=hub_env(hub.url))

    _assert_refused_and_nothing_left(result, home, hub_env, gpt2reg, "pytorch_model.bin", "pickle", "model.safetensors")
    assert not [path for _, path in hub.requests if "/resolve/" in path], "a file was fetched from a refused repository"


def test_a_download_cut_short_is_refused_and_leaves_nothing(run_cli, gpt2reg, hub, hub_env, checkpoint_files, tmp_path):
    hub.repos["acme/flaky"] = FakeRepo(checkpoint_files, cut_short=("model.safetensors",))
    home = tmp_path / "home"

    result = run_cli("import", "flaky", "hf://acme/flaky", "--home", home, env=hub_env(hub.url))

    _assert_refused_and_nothing_left(result, home, hub_env, gpt2reg, "model.safetensors", "cut short")
    assert ("GET", f"/acme/flaky/resolve/{hub.repos['acme/flaky'].commit}/model.safetensors") in hub.requests


def test_a_download_interrupted_with_ctrl_c_leaves_nothing(gpt2reg, hub, hub_env, checkpoint_files, tmp_path):
    hub.repos["acme/slow"] = FakeRepo(checkpoint_files, stalled=("model.safetensors",))
    home = tmp_path / "home"
    environment = {**os.environ, **hub_env(hub.url), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", "from registry.cli import main; main()", "import", "slow", "hf://acme/slow",
               "--home", str(home)]
    with subprocess.Popen(command, env=environment, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:
        try:
            assert hub.stalled.wait(timeout=300), "the import never reached the weights"
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=120)
        finally:
            process.kill()

    # Click reports a Ctrl-C inside a command as "aborted" (exit 1); outside one, the CLI says "interrupted" (130).
    assert process.returncode in (1, 130) and stderr.strip().splitlines()[-1] in ("aborted", "interrupted"), stderr
    assert _work_folders(hub_env.scratch) == [], "the interrupted download was left behind"
    assert gpt2reg("list", "--json", "--home", home).json()["variants"] == []
    assert gpt2reg("doctor", "--json", "--home", home).json()["problems"] == []


@pytest.mark.parametrize("target, phrase", [
    # Another host, as the hub's CDN is, that serves other bytes of the same length: only the hash tells.
    ("cdn", "does not match the sha256 the hub lists"),
    # A scheme the client must never follow to (a local file).
    ("file:///etc/hostname", "not http(s)"),
])
def test_a_redirect_is_followed_only_to_http_and_only_to_the_declared_content(
        run_cli, gpt2reg, hub, cdn, hub_env, checkpoint_files, tmp_path, target, phrase):
    weights = checkpoint_files["model.safetensors"]
    cdn.blobs["/blobs/weights"] = weights[:-64] + bytes(64)
    location = cdn.url + "/blobs/weights" if target == "cdn" else target
    hub.repos["acme/moved"] = FakeRepo(checkpoint_files, redirects={"model.safetensors": location})
    home = tmp_path / "home"

    result = run_cli("import", "moved", "hf://acme/moved", "--home", home, env=hub_env(hub.url))

    _assert_refused_and_nothing_left(result, home, hub_env, gpt2reg, "model.safetensors", phrase)


@pytest.mark.parametrize("source", ["hf://acme/anything", "gpt2_base_en"])
def test_an_unreachable_hub_fails_at_once_with_one_line(run_cli, gpt2reg, hub_env, tmp_path, source):
    port = _closed_port()
    env = hub_env(f"http://127.0.0.1:{port}")
    # KerasHub's presets come from Kaggle; kagglesdk's TEST environment names http://localhost:7777.
    env["KAGGLE_API_ENVIRONMENT"] = "TEST"
    if source == "gpt2_base_en":
        with socket.socket() as probe:
            if probe.connect_ex(("localhost", 7777)) == 0:
                pytest.skip("something listens on localhost:7777, kagglesdk's test endpoint")
    home = tmp_path / "home"

    result = run_cli("import", "hub", source, "--home", home, env=env)

    host = f"127.0.0.1:{port}" if source.startswith("hf://") else "localhost:7777"
    _assert_refused_and_nothing_left(result, home, hub_env, gpt2reg, f"{host} is unreachable", "import the local folder")


def test_a_name_that_is_no_kerashub_gpt2_preset_is_refused_without_the_network(gpt2reg, hub_env, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "TEST")  # were the name looked up online, it would fail differently
    home = tmp_path / "home"

    result = gpt2reg("import", "bert", "bert_base_en", "--home", home)

    assert result.exit_code == 2, result
    assert "'bert_base_en' is not one of KerasHub's GPT-2 presets (gpt2_base_en," in result.stderr, result
    assert len(result.stderr.strip().splitlines()) == 1, result
    assert not home.exists() or gpt2reg("list", "--json", "--home", home).json()["variants"] == []
