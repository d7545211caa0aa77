"""Where a variant's files are, for reading: in the home's artifact store, or downloaded.

A variant's lineage row names its artifact location, and that row is data: a
shared or altered store may point anywhere. `VariantFiles.preset_path` reads
only inside a local home's artifact store, and from a tracking server it
downloads into the home's cache, whole and hash-checked, or not at all.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from registry.errors import RegistryError, UsageError, shown
from registry.home import Home
from registry.variant import Variant

if TYPE_CHECKING:
    from registry.tracking import Tracker


class VariantFiles:
    """The files of the variants of one home; `tracker` opens the tracking store when a download needs it."""

    def __init__(self, home: Home, tracker: Callable[[], Tracker]):
        self.home = home
        self.tracker = tracker

    def preset_path(self, variant: Variant) -> Path:
        """The variant's KerasHub preset folder (downloaded first from a remote store).

        Where the files are is read from the variant's lineage row, which is data: a shared or
        altered store may point anywhere. A local home only reads inside its own artifact store,
        and a download only lands in the cache folder named by a well-formed content hash.
        """
        import re

        from registry.artifacts import MANIFEST, weights_path
        from registry.tracking import local_path

        inside = weights_path(variant.kind)
        local = local_path(variant.artifact_uri or "")
        try:
            if local is not None:
                path = local / inside
                if self.home.is_local:
                    root = self.home.artifact_root.resolve()
                    resolved = path.resolve()
                    if resolved == root or not resolved.is_relative_to(root):
                        raise UsageError(
                            f"the files of {variant.ref} are recorded at {shown(variant.artifact_uri)}, outside this "
                            f"home's artifact store {root}; open the registry that holds them with --home, "
                            "or run `gpt2reg doctor`"
                        )
            else:
                if not re.fullmatch(r"[0-9a-f]{64}", variant.content_hash or ""):
                    raise UsageError(f"the content hash recorded for {variant.ref}, {shown(variant.content_hash)}, "
                                     "is not a sha256 digest; run `gpt2reg doctor`")
                cache = self.home.path / "cache" / variant.content_hash
                path = cache / Path(inside).name
                if not (path / MANIFEST).is_file():
                    self._download(variant, inside, cache)
            present = (path / MANIFEST).is_file()
        except (OSError, RuntimeError, ValueError) as error:  # RuntimeError: a loop of symbolic links
            raise UsageError(f"the files of {variant.ref} are recorded at {shown(variant.artifact_uri)}, which "
                             f"cannot be read ({error}); run `gpt2reg doctor`") from None
        if not present:
            raise RegistryError(f"the files of {variant.ref} are missing from {path}; run `gpt2reg doctor`")
        return path

    def _download(self, variant: Variant, inside: str, cache: Path) -> None:
        """Fetch the variant's files into `cache`, whole and matching their hash, or not at all.

        The files land in a work folder first and get the cache's name in one rename once
        their hash is checked, so an interrupted download is never mistaken for the variant
        (which `gpt2reg doctor` would then report as damaged in the shared store).
        """
        from registry import leases

        cache.parent.mkdir(parents=True, exist_ok=True)
        with leases.hold(self.home) as lease:  # named in the work folder's name: `gpt2reg doctor` leaves it alone
            work = Path(tempfile.mkdtemp(prefix=f".{cache.name[:12]}-download-{lease.id}-", dir=cache.parent))
            self._fetch_checked(variant, inside, cache, work)

    def _fetch_checked(self, variant: Variant, inside: str, cache: Path, work: Path) -> None:
        from registry import artifacts

        from registry.artifacts import PRESET_ARTIFACT

        try:
            if variant.kind == "full":
                # A full variant's files are its MLflow model's: on a tracking server, only there.
                location = f"{self.tracker().model_files_uri(variant.name, variant.version)}/artifacts/{PRESET_ARTIFACT}"
            else:
                location = f"{variant.artifact_uri}/{inside}"
            fetched = self.tracker().download(location, work)
            if not (fetched / artifacts.MANIFEST).is_file():
                raise RegistryError(f"the files of {variant.ref} are missing from the tracking server "
                                    f"({location}); run `gpt2reg doctor`")
            if artifacts.content_hash(fetched) != variant.content_hash:
                raise RegistryError(f"the files of {variant.ref} on the tracking server do not match their recorded "
                                    "hash (damaged files); run `gpt2reg doctor`")
            if fetched != work / Path(inside).name:
                fetched.rename(work / Path(inside).name)
            finished = cache / Path(inside).name / artifacts.MANIFEST
            if finished.is_file():
                return  # another process finished the same download first; it may be reading it
            if cache.exists():
                shutil.rmtree(cache)  # files left without their manifest by an unchecked copy
            try:
                os.rename(work, cache)
            except OSError:
                if not finished.is_file():
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)


def checked(variant: Variant, path: Path) -> Path:
    """`path`, the variant's files, once their content hash is the one recorded for it."""
    from registry.artifacts import content_hash

    if content_hash(path) != variant.content_hash:
        raise RegistryError(
            f"the weights of {variant.ref} do not match their recorded hash (damaged files); run `gpt2reg doctor`"
        )
    return path


def check_pinned_base(adapter: Variant, base: Variant) -> None:
    """An adapter loads only onto the base weights it was trained on (its tag `base_content_hash`)."""
    pinned = adapter.tags.get("base_content_hash")
    if base.content_hash != pinned:
        raise UsageError(
            f"adapter {adapter.ref} is pinned to base weights {str(pinned)[:12]}, but {base.ref} holds "
            f"{base.content_hash[:12]}; load it on {adapter.parent}"
        )
