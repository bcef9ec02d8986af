"""A model source checked before any weights load, and the identity its traces carry.

A local folder is read only as far as its ``config.json`` and the headers of its safetensors
files, so a broken folder fails in milliseconds instead of deep inside ``from_pretrained``.
Pickle weights (``*.bin``, ``*.pt`` ...) can run code when loaded; they are refused unless
the caller allows them explicitly.

Identity: a hub model is its id plus the commit it resolved to; a local folder is a readable
name plus a SHA-256 of its weight files, so the same weights get the same identity whatever
path they are given by, and a retrained checkpoint in the same folder gets a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import InputError, ModelLoadError, UnsafeCheckpointError
from engine.inputs import check_text

HUB_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]{1,96}")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
SHARD_INDEX = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on its JSON header
CACHE_ENV = "LVLM_INTERPRET_CACHE"  # where weight hashes are cached (default ~/.cache/...)


@dataclass(frozen=True)
class ModelSource:
    """What ``--model`` names: a hub id (``folder`` None) or a checked local folder."""

    text: str
    folder: Path | None = None
    name: str = ""  # readable name of a local folder
    weights: tuple[Path, ...] = ()  # the files its identity hashes
    language_layers: int | None = None  # the LM's layer count, when config.json states it
    model_type: str | None = None  # config.json's ``model_type``: which adapter serves it
    commit: str | None = None  # a hub id's resolved commit (engine.loading.resolve_source)


def check_model_source(
    model: str, *, revision: str | None = None, allow_pickle: bool = False
) -> ModelSource:
    """Refuse a model argument that cannot load, without loading anything."""
    check_text(model, "The model")
    if not model.strip():  # Path("") is the working directory: never guess that
        raise InputError("--model is empty: give a hub id or a checkpoint folder.")
    folder = Path(model).expanduser()
    if folder.is_dir():
        if revision is not None:
            raise InputError(
                f"--revision {revision!r} applies to hub ids only; {model} is a local folder, "
                "identified by a hash of its weights. Leave out --revision."
            )
        return _check_folder(model, folder, allow_pickle)
    if folder.exists():
        raise ModelLoadError(f"{model} is a file; give the checkpoint folder (with config.json).")
    if model.startswith((".", "/", "~")) or not HUB_ID.fullmatch(model) or ".." in model:
        raise ModelLoadError(
            f"No folder {model} and it is not a hub id (name or org/name); check the path."
        )
    return ModelSource(model)


def _check_folder(model: str, folder: Path, allow_pickle: bool) -> ModelSource:
    config = _read_json(folder / "config.json", model)
    if not isinstance(config, dict):
        raise ModelLoadError(
            f"{model}/config.json is not a JSON object; the checkpoint is damaged."
        )
    weights = _safetensors_files(folder, model)
    if not weights:
        pickles = sorted(p for pattern in PICKLE_PATTERNS for p in folder.glob(pattern))
        if not pickles:
            raise ModelLoadError(f"{model} has no weights (*.safetensors); check the folder.")
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{model} holds its weights only as pickle ({pickles[0].name}), which can run "
                "code when loaded: convert it to safetensors, or pass --allow-pickle if you "
                "trust its source."
            )
        weights = pickles
    for path in weights:
        if path.suffix == ".safetensors":
            _check_safetensors(path, model)
    named = config.get("_name_or_path")
    name = named if isinstance(named, str) and HUB_ID.fullmatch(named) else folder.resolve().name
    return ModelSource(model, folder, name, tuple(weights), **_config_facts(config))


def pinned(source: ModelSource, config_file: Path, commit: str) -> ModelSource:
    """A hub ``source`` pinned to ``commit``, with what its ``config.json`` (downloaded at that
    commit, see :func:`engine.loading.resolve_source`) says before any weights load."""
    config = _read_json(config_file, source.text)
    if not isinstance(config, dict):
        raise ModelLoadError(f"{source.text}'s config.json is not a JSON object.")
    return replace(source, commit=commit, **_config_facts(config))


def _config_facts(config: dict) -> dict:
    """What the checks before loading need from a config: the LM depth and the model type."""
    model_type = config.get("model_type")
    return {
        "language_layers": _language_layers(config),
        "model_type": model_type if isinstance(model_type, str) and model_type else None,
    }


def _language_layers(config: dict) -> int | None:
    """``num_hidden_layers`` of the text model (``text_config`` first), if stated."""
    for section in (config.get("text_config"), config):
        layers = section.get("num_hidden_layers") if isinstance(section, dict) else None
        if isinstance(layers, int) and not isinstance(layers, bool) and layers > 0:
            return layers
    return None


def check_layers(layers: list[int], count: int, option: str) -> None:
    """Every layer index (negative counts from the end) within a model of ``count`` layers."""
    for layer in layers:
        if not -count <= layer < count:
            raise InputError(
                f"{option} {layer} is out of range: the model has {count} layers "
                f"(0..{count - 1}, or -1..-{count} from the end)."
            )


def _read_json(path: Path, model: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"{model} has no config.json: it is not a checkpoint folder."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{model}/{path.name} is not readable JSON ({error}).") from None


def _safetensors_files(folder: Path, model: str) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if (folder / SHARD_INDEX).exists():
        index = _read_json(folder / SHARD_INDEX, model)
        shards = index.get("weight_map", {}).values() if isinstance(index, dict) else None
        if not shards:
            raise ModelLoadError(f"{model}/{SHARD_INDEX} lists no weight files.")
        missing = sorted({str(s) for s in shards} - {f.name for f in files})
        if missing:
            raise ModelLoadError(f"{model} lacks weight shard {missing[0]} named in {SHARD_INDEX}.")
    return files


def _check_safetensors(path: Path, model: str) -> None:
    """The header parses and its tensors end exactly at the end of the file (not truncated)."""
    damaged = f"{model}/{path.name} is truncated or not a safetensors file"
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size < 8:
                raise ModelLoadError(f"{damaged} ({size} bytes).")
            (length,) = struct.unpack("<Q", file.read(8))
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise ModelLoadError(f"{damaged} (header of {length} bytes).")
            header = json.loads(file.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{damaged} ({error}).") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{damaged} (header is not a JSON object).")
    ends = [
        entry["data_offsets"][1]
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry
    ]
    expected = 8 + length + max(ends, default=0)
    if expected != size:
        raise ModelLoadError(f"{damaged} ({size:,} bytes, its header describes {expected:,}).")


def weights_revision(files: tuple[Path, ...]) -> str:
    """``sha256:<16 hex>`` of the weight files' bytes in name order, cached by file stats.

    Hashing a 14 GB checkpoint takes about a minute; the cache entry is keyed by each file's
    path, size, inode and modification time, so any rewrite of the weights hashes again.
    """
    stats = [(str(p.resolve()), *_stat_key(p)) for p in files]
    entry = _cache_dir() / hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    try:
        cached = entry.read_text(encoding="ascii").strip()
        if re.fullmatch(r"sha256:[0-9a-f]{16}", cached):
            return cached
    except (OSError, UnicodeDecodeError):
        pass
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    revision = "sha256:" + digest.hexdigest()[:16]
    try:  # a cache is an optimisation: a read-only home only costs the hash next time
        entry.parent.mkdir(parents=True, exist_ok=True)
        temporary = entry.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(revision, encoding="ascii")
        os.replace(temporary, entry)
    except OSError:
        pass
    return revision


def _stat_key(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_size, info.st_ino, info.st_mtime_ns


def _cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "weights-sha256"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lvlm-interpret" / "weights-sha256"


def name_checkpoint(folder: Path, name: str) -> None:
    """Give a local checkpoint the readable name its traces will carry (``_name_or_path``).

    Transformers no longer writes this key, but keeps it when present; the weights hash
    still tells two checkpoints of one name apart.
    """
    if not HUB_ID.fullmatch(name):
        raise InputError(f"A checkpoint name is a hub-style id (name or org/name), not {name!r}.")
    path = folder / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**config, "_name_or_path": name}, indent=2) + "\n")
