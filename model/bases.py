"""Where a base checkpoint comes from: a local path or a hub id, decided before anything loads.

transformers treats any ``a/b`` string that is not on disk as a hub id and retries the download
for about 50 seconds before it says anything. Here a value that names a local path (absolute,
``./``, ``~``, more than one ``/``, or a first component that exists here, like ``checkpoints/``)
and is not on disk is "not found" at once; a hub id is accepted when it is in the local cache, and
otherwise only when the hub answers (checked with one short connection), so no network and no cache
is one line, not a minute of retries. Standard library and huggingface_hub only.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from errors import UserError

_PROBE_SECONDS = 3.0


class BaseModelError(UserError):
    """A base model (tower, language model, tokenizer) that cannot be found; one line."""


def looks_local(name: str) -> bool:
    """Whether ``name`` can only be a local path (a hub id is exactly ``owner/name``)."""
    if os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") != 1 or "\\" in name:
        return True
    return Path(name.split("/", 1)[0]).is_dir()


def _in_hub_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _hub_reachable() -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=_PROBE_SECONDS):
            return True
    except OSError:
        return False


def check_base(name: str, label: str) -> None:
    """Raise :class:`BaseModelError` (naming the setting ``label``) unless ``name`` can be loaded:
    a local path that exists, or a hub id in the cache or reachable on the hub."""
    if os.path.exists(os.path.expanduser(name)):
        return
    if looks_local(name):
        raise BaseModelError(f"{label}: not found: {name} (a local path)")
    if _in_hub_cache(name):
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise BaseModelError(f"{label}: hub model {name} is not in the local cache and HF_HUB_OFFLINE=1 is set; "
                             "download it first or give a local path")
    if not _hub_reachable():
        raise BaseModelError(f"{label}: hub model {name} is not in the local cache and the hub cannot be reached; "
                             "download it on a machine with network access or give a local path")
