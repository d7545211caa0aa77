"""Checkpoints from a hub: downloaded into a local folder, checked, then loaded like any folder.

`gpt2reg import NAME hf://org/repo[@revision]` and `gpt2reg import NAME gpt2_base_en`
never hand a hub handle to a loader that downloads and loads in one step. The files
a GPT-2 checkpoint needs (and only those: never a pickle) are downloaded into a
temporary folder, each one compared with the size and hash the hub declared for it,
and the folder then goes through the same checks and the same loader as a folder
on disk (`model_files.check_import_source`, then the import's local path).

- Hugging Face (`hf://`): the repository's listing at one revision gives the
  commit it resolves to and every file's size and hash (sha256 for an LFS file,
  the git blob id for any other); every file is fetched at that commit, so the
  checkpoint is one consistent commit even if the branch moves meanwhile. The
  hub serves large files through a redirect to another host (its CDN): an
  http(s) redirect is followed, and what arrives must then match the declared
  size and hash; a redirect to any other scheme is refused. `HF_ENDPOINT` names
  another hub (a mirror); `HF_TOKEN` reaches private repositories.
- KerasHub preset names (`gpt2_base_en`): KerasHub's built-in presets live on
  Kaggle; their files are fetched with kagglehub, which checks each file against
  the md5 Kaggle sends with it.

The temporary folder is removed however the download ends (an error, Ctrl-C),
so an interrupted import leaves nothing behind. What was fetched is recorded
with the import: the revision asked for, the commit it resolved to, and each
file's sha256.

Nothing here imports TensorFlow or Keras: fetching and checking the files
needs neither.

Example:
    >>> from backends import hub_sources
    >>> with hub_sources.downloaded("hf://openai-community/gpt2") as (folder, provenance):
    ...     print(sorted(p.name for p in folder.iterdir()), provenance["source_commit"])
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from backends.model_files import PICKLE_SUFFIXES
from registry.errors import UsageError

HF_SCHEME = "hf://"
KAGGLE_SCHEME = "kaggle://"  # how KerasHub writes the Kaggle handle of a built-in preset
OFFLINE_FIX = "download the checkpoint where the network allows and import the local folder"

# A Hugging Face GPT-2 checkpoint: what KerasHub's converter reads, and the tokenizer files an
# `hf` export writes. Weights only as one model.safetensors.
HF_REQUIRED_FILES = ("config.json", "vocab.json", "merges.txt")
HF_OPTIONAL_FILES = ("tokenizer.json", "generation_config.json")
HF_SINGLE_WEIGHTS = "model.safetensors"
HF_WEIGHT_INDEX = "model.safetensors.index.json"
# A KerasHub preset (`save_to_preset`'s files), whether on Kaggle or uploaded to a Hugging Face repository.
KERAS_REQUIRED_FILES = ("config.json", "model.weights.h5", "tokenizer.json", "metadata.json",
                        "assets/tokenizer/vocabulary.json", "assets/tokenizer/merges.txt")
KERAS_OPTIONAL_FILES = ("preprocessor.json", "task.json")

# Seconds to wait for the hub to accept a connection before calling it unreachable: the
# clients' own retries take minutes to give up on a network that drops packets.
CONNECT_TIMEOUT_S = 5
# Kaggle's API host when kagglesdk cannot be asked (it names it from KAGGLE_API_ENVIRONMENT).
KAGGLE_API_ENDPOINT = "https://api.kaggle.com"


def parse_hf_handle(handle: str) -> tuple[str, str | None]:
    """`hf://org/repo[@revision]` -> (repo id, revision or None for the default branch)."""
    body = handle[len(HF_SCHEME):]
    repo_id, _, revision = body.partition("@")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+|[A-Za-z0-9][\w.-]*", repo_id) or ".." in repo_id \
            or revision and not re.fullmatch(r"[\w./-]+", revision):
        raise UsageError(f"{handle!r} is not a Hugging Face handle; write hf://org/repo or hf://org/repo@revision")
    return repo_id, revision or None


@contextlib.contextmanager
def downloaded(source: str, kaggle_handle: str | None = None):
    """Yield (folder, provenance): the checkpoint's files in a temporary folder, removed on exit.

    `source` is `hf://org/repo[@revision]`, or a KerasHub preset name with `kaggle_handle`
    the Kaggle handle KerasHub gives it (`kaggle://keras/gpt2/keras/gpt2_base_en/3`).
    """
    with tempfile.TemporaryDirectory(prefix="gpt2reg-download-") as scratch:
        folder = Path(scratch) / "checkpoint"
        folder.mkdir()
        if source.startswith(HF_SCHEME):
            provenance = _download_hugging_face(source, folder, Path(scratch))
        else:
            provenance = _download_kaggle(source, kaggle_handle, folder, Path(scratch))
        yield folder, provenance


# ---------------------------------------------------------------- reachability


def endpoint_reachable(url: str) -> bool:
    """Whether the host of `url` resolves and accepts a connection (or a proxy stands between)."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    if _proxied(parsed.scheme, host):
        return True  # the proxy, not this machine, resolves and reaches the host
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def _proxied(scheme: str, host: str) -> bool:
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(host)


def _refuse_unreachable(handle: str, endpoint: str) -> None:
    if not endpoint_reachable(endpoint):
        host = urlparse(endpoint).netloc or endpoint
        raise UsageError(f"cannot fetch {handle!r}: {host} is unreachable (no network); {OFFLINE_FIX}")


# ---------------------------------------------------------------- Hugging Face


def _download_hugging_face(handle: str, folder: Path, scratch: Path) -> dict:
    repo_id, revision = parse_hf_handle(handle)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        raise UsageError(f"cannot fetch {handle!r}: HF_HUB_OFFLINE is set; unset it, or {OFFLINE_FIX}")
    # The clients read HF_HOME and HF_ENDPOINT when first imported.
    from huggingface_hub import HfApi, constants, hf_hub_download

    endpoint = constants.ENDPOINT
    _refuse_unreachable(handle, endpoint)
    with _hub_errors(handle, endpoint):
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, files_metadata=True)
    commit = info.sha
    if not commit or not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise UsageError(f"cannot fetch {handle!r}: {endpoint} named no commit for it; is HF_ENDPOINT a Hugging Face hub?")
    listed = {sibling.rfilename: sibling for sibling in info.siblings or []}
    wanted = _hugging_face_files(handle, listed)
    digests = {}
    for name in wanted:
        with _hub_errors(handle, endpoint, name):
            # Pinned to the listed commit: every file of one consistent revision. A cache of its own,
            # so no file comes from an earlier download; the client's bookkeeping (the folder's
            # .cache) is removed below, so the folder holds the checkpoint's files alone.
            hf_hub_download(repo_id, name, revision=commit, local_dir=folder, endpoint=endpoint,
                            cache_dir=scratch / "hub-cache")
        digests[name] = _check_declared(handle, folder / name, listed[name])
    shutil.rmtree(folder / ".cache", ignore_errors=True)
    return {"source_revision": revision or "main", "source_commit": commit, "source_files": digests}


def _hugging_face_files(handle: str, listed: dict) -> list[str]:
    """The files to fetch, judged from the listing alone: a repository that needs a pickle, or lacks
    a file, is refused before anything is downloaded."""
    names = set(listed)
    if "config.json" not in names:
        raise UsageError(f"{handle} has no config.json; it is not a model checkpoint (give a GPT-2 repository)")
    if "model.weights.h5" in names or "metadata.json" in names:  # a KerasHub preset uploaded to the hub
        missing = [name for name in KERAS_REQUIRED_FILES if name not in names]
        if missing:
            raise UsageError(f"{handle} lacks {', '.join(missing)}; a KerasHub preset needs "
                             f"{', '.join(KERAS_REQUIRED_FILES)}")
        return [*KERAS_REQUIRED_FILES, *(name for name in KERAS_OPTIONAL_FILES if name in names)]
    if HF_SINGLE_WEIGHTS not in names:
        if HF_WEIGHT_INDEX in names:
            # The import's folder check takes one model.safetensors: refused now rather than after the shards.
            raise UsageError(f"{handle} holds its weights in safetensors shards only; GPT-2 checkpoints are imported "
                             "from one model.safetensors: join the shards (safetensors' save_file) and import the folder")
        pickled = sorted(name for name in names if name.lower().endswith(PICKLE_SUFFIXES) and "/" not in name)
        if pickled:
            raise UsageError(
                f"{handle} holds its weights only in pickle-based {', '.join(pickled)}, which can run code when "
                "loaded and is never downloaded; use a repository (or revision) with model.safetensors"
            )
        raise UsageError(f"{handle} has no model.safetensors; a Hugging Face GPT-2 repository needs config.json, "
                         "model.safetensors, vocab.json and merges.txt")
    weights = [HF_SINGLE_WEIGHTS]
    missing = [name for name in HF_REQUIRED_FILES if name not in names]
    if missing:
        raise UsageError(f"{handle} lacks {', '.join(missing)}; a Hugging Face GPT-2 repository needs config.json, "
                         "model.safetensors, vocab.json and merges.txt")
    return [*HF_REQUIRED_FILES, *weights, *(name for name in HF_OPTIONAL_FILES if name in names)]


def _check_declared(handle: str, path: Path, sibling) -> str:
    """The file's sha256, once its size and hash are those the hub listed for it."""
    sha256, blob = hashlib.sha256(), hashlib.sha1()
    size = path.stat().st_size
    blob.update(f"blob {size}\0".encode())  # a git blob id: sha1 over this header and the content
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            sha256.update(chunk)
            blob.update(chunk)
    declared_size = sibling.lfs.size if sibling.lfs else sibling.size
    if sibling.lfs:
        expected, actual, kind = sibling.lfs.sha256, sha256.hexdigest(), "sha256"
    else:
        expected, actual, kind = sibling.blob_id, blob.hexdigest(), "git blob id"
    if declared_size is not None and size != declared_size:
        raise UsageError(f"{handle}: {sibling.rfilename} arrived with {size} bytes where the hub lists {declared_size} "
                         "(a download cut short, or a redirect that served another file); nothing was imported")
    if not expected:
        raise UsageError(f"{handle}: the hub lists no hash for {sibling.rfilename}, so its download cannot be checked; "
                         "is HF_ENDPOINT a Hugging Face hub?")
    if actual != expected.lower():
        raise UsageError(f"{handle}: {sibling.rfilename} does not match the {kind} the hub lists for it (a redirect "
                         "or proxy served other content); nothing was imported")
    return sha256.hexdigest()


@contextlib.contextmanager
def _hub_errors(handle: str, endpoint: str, name: str | None = None):
    """The hub client's exceptions as one line each."""
    import httpx2
    from huggingface_hub import errors

    what = f"{name} of {handle!r}" if name else repr(handle)
    try:
        yield
    except errors.GatedRepoError:
        raise UsageError(f"cannot fetch {handle!r}: the repository is gated; accept its terms on the hub and set "
                         "HF_TOKEN") from None
    except errors.RepositoryNotFoundError:
        raise UsageError(f"cannot fetch {handle!r}: no such repository on {endpoint} (a private one needs HF_TOKEN); "
                         "check the name") from None
    except errors.RevisionNotFoundError:
        raise UsageError(f"cannot fetch {handle!r}: no such revision; give a branch, tag or commit that exists") from None
    except errors.RemoteEntryNotFoundError:
        raise UsageError(f"cannot fetch {what}: the hub lists the file but does not serve it (404); "
                         "try again later or pin another revision") from None
    except errors.LocalEntryNotFoundError as error:
        # The client's word for "the HEAD call failed and no local copy exists": the cause says why.
        cause = error.__cause__ or error.__context__
        reason = ("the server's answer lacks the hub's file headers; is HF_ENDPOINT a Hugging Face hub?"
                  if isinstance(cause, errors.FileMetadataError) else
                  f"{type(cause).__name__ if cause else 'no answer'} from the hub; try again, or {OFFLINE_FIX}")
        raise UsageError(f"cannot fetch {what}: {reason}") from None
    except errors.OfflineModeIsEnabled:
        raise UsageError(f"cannot fetch {handle!r}: HF_HUB_OFFLINE is set; unset it, or {OFFLINE_FIX}") from None
    except errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else "?"
        raise UsageError(f"cannot fetch {what}: the hub answered HTTP {status}; try again later") from None
    except httpx2.UnsupportedProtocol:
        raise UsageError(f"cannot fetch {what}: the hub redirected it to a location that is not http(s), "
                         "which is refused; check HF_ENDPOINT and any proxy in between") from None
    except (httpx2.TransportError, ConnectionError) as error:
        raise UsageError(f"cannot fetch {what}: {type(error).__name__} talking to the hub ({str(error)[:80]}); "
                         f"try again, or {OFFLINE_FIX}") from None
    except OSError as error:
        if "Consistency check failed" in str(error):  # the client's own size check on a download
            raise UsageError(f"cannot fetch {what}: the download was cut short (fewer bytes than the hub declared); "
                             "nothing was imported, try again") from None
        raise


# ---------------------------------------------------------------- Kaggle (KerasHub's built-in presets)


def _kaggle_endpoint() -> str:
    try:
        from kagglesdk.kaggle_env import get_endpoint, get_env

        return get_endpoint(get_env())
    except Exception:  # an unknown KAGGLE_API_ENVIRONMENT: kagglehub itself will say so
        return KAGGLE_API_ENDPOINT


def _download_kaggle(handle: str, kaggle_handle: str, folder: Path, scratch: Path) -> dict:
    _refuse_unreachable(handle, _kaggle_endpoint())
    import kagglehub

    model = kaggle_handle.removeprefix(KAGGLE_SCHEME)
    digests = {}
    for name in (*KERAS_REQUIRED_FILES, *KERAS_OPTIONAL_FILES):
        try:
            # kagglehub checks each file against the md5 Kaggle sends with it (when it sends one).
            fetched = Path(kagglehub.model_download(model, path=name, output_dir=str(scratch / "kaggle")))
        except Exception as error:  # kagglehub raises its own HTTP errors, ValueError and requests' errors
            text = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
            if name in KERAS_OPTIONAL_FILES and ("404" in text or "not present" in text):
                continue
            raise UsageError(f"cannot fetch {name} of {handle!r} ({text}); try again, or {OFFLINE_FIX}") from None
        if fetched.is_symlink() or not fetched.is_file():
            raise UsageError(f"cannot fetch {name} of {handle!r}: kagglehub gave no plain file; {OFFLINE_FIX}")
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fetched, folder / name)
        digests[name] = _sha256(folder / name)
    version = model.split("/")[4] if model.count("/") == 4 else None
    return {"source_handle": kaggle_handle, "source_revision": version or "latest", "source_files": digests}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
