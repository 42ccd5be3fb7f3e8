"""Model and tokenizer loading, and the one "local folder or Hub id" rule (train, eval, rollout).

Aliases such as `tiny` (the built-in model of the synthetic task) are resolved by
`hapo_cli.tasks.model_path` before anything here is called.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from hapo_cli.errors import HapoError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


ALIASES = ("tiny", "tiny-logic")  # built-in models, built on first use (resolved by hapo_cli.tasks.model_path)


def is_local_path(name_or_path: str) -> bool:
    """A local folder (exists, or looks like a path) rather than a Hub id `org/name`."""
    p = Path(name_or_path).expanduser()
    return name_or_path.startswith((".", "/", "~")) or p.exists() or name_or_path.count("/") != 1


def resolve_model_path(name_or_path: str) -> str:
    """A local folder must exist and hold config.json; anything shaped `org/name` is a Hub id."""
    if not is_local_path(name_or_path):
        return name_or_path
    p = Path(name_or_path).expanduser()
    if not p.exists():
        raise HapoError(f"model path {name_or_path!r} does not exist: give a local model folder, a Hub id (org/name) or tiny")
    if not (p / "config.json").exists():
        raise HapoError(f"model path {name_or_path!r} has no config.json: point it at a saved transformers model folder")
    return str(p)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(name_or_path: str, dtype: str = "float32", device: str | torch.device = "cpu",
                             trust_remote_code: bool = False, attn_implementation: str | None = None):
    """(model, tokenizer) through `from_pretrained`; one clear HapoError when it cannot be had."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name_or_path)
    kwargs = {"trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        tokenizer = load_tokenizer(path, trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], **kwargs)
    except OSError as err:
        if os.path.isdir(path):
            raise HapoError(f"cannot load the model in {path!r}: {str(err).splitlines()[0]}") from None
        raise HapoError(
            f"cannot load model {name_or_path!r} from the Hugging Face Hub (offline or not cached): "
            f"download it where there is network and set the model to /path/to/folder"
        ) from None
    return model.to(device), tokenizer


def resolve_device(device: str = "auto") -> str:
    """auto -> cuda when available, else cpu; an explicit device is returned as given."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


_TRUE = ("1", "ON", "YES", "TRUE")
_PROBE: dict[tuple[str, int], bool] = {}  # (host, port) -> reachable, probed once per process


def hub_offline_by_env() -> str | None:
    """The offline variable that is set (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), else None."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").upper() in _TRUE:
            return var
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face endpoint ($HF_ENDPOINT) accepts a TCP connection: one short probe,
    remembered for the process (False at once when an offline variable is set)."""
    if hub_offline_by_env():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    key = (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
    if key not in _PROBE:
        try:
            with socket.create_connection(key, timeout=timeout):
                _PROBE[key] = True
        except OSError:
            _PROBE[key] = False
    return _PROBE[key]


def _cached_on_disk(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an unusual cache layout: let from_pretrained decide
        return False


def _go_offline() -> None:
    """Make huggingface_hub / transformers skip the network (no retries) for the rest of the process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hc

        hc.HF_HUB_OFFLINE = True
    except ImportError:
        pass


def ensure_reachable(name_or_path: str, timeout: float = 3.0) -> str:
    """Check, before any model loads, that `name_or_path` can be had: a local folder must exist
    with config.json; a Hub id must be in the local cache or the Hub must answer one short probe.
    Offline with a cached model, switches to offline mode (no retries). Returns the resolved path
    or id; one HapoError line otherwise."""
    path = resolve_model_path(name_or_path)
    if is_local_path(name_or_path):
        return path
    if _cached_on_disk(path):
        if not hub_reachable(timeout):
            _go_offline()
        return path
    if not hub_reachable(timeout):
        why = f"{hub_offline_by_env()} is set" if hub_offline_by_env() else "the Hugging Face Hub is unreachable"
        raise HapoError(f"model {name_or_path!r} is not in the local cache and {why} (offline): download it where "
                        "there is network (huggingface-cli download ...) and give the local folder instead")
    return path
