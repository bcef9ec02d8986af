"""Read and check a dataset manifest before any model loads.

A manifest is a JSONL file (one object per line), a CSV file (a header row), or a folder of
images asked one shared prompt. Each row names one or more images, a prompt, and optionally a
reference answer, tags and annotations (``boxes``: ``[x0, y0, x1, y1]`` pixel boxes; ``masks``:
mask image paths), which are kept with the trace as ``extra["annotations"]``. In CSV, ``tags``
are separated by ``;`` and ``boxes`` / ``masks`` hold JSON.

Paths: a relative path is resolved against the manifest's folder and, after symbolic links
are followed, must stay inside it; an absolute path or one that leads out is refused unless
the caller allows it (``--allow-outside``). A manifest from elsewhere therefore cannot make a
recording read (and store the bytes of) files beyond the folder it came with.

A bad row is reported with its line number and reason and left out; only a manifest that
cannot be read at all, or has no valid row, is an error.

The per-row steps of a recording (:func:`row_request`, :func:`record_row`, :data:`ROW_ERRORS`,
:class:`RowOutcome`) live here too, so that the one-process run and the Ray pipeline
(engine/distributed.py) record, judge and report a row with the same code.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image, UnidentifiedImageError

from engine.errors import EngineError, InputError
from engine.inputs import ImageInput, check_prompt, check_reference, check_tags, load_image
from store import StoreError

if TYPE_CHECKING:
    from engine.loading import LoadedModel
    from engine.recorder import RecordOptions
    from engine.recording import RecordRequest
    from store import TraceStore

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})
COLUMNS = frozenset({"image", "prompt", "reference", "tags", "boxes", "masks"})


class ManifestError(InputError):
    """The manifest as a whole cannot be used (missing, unreadable, no valid row)."""


@dataclass(frozen=True)
class ManifestRow:
    line: int  # 1-based line of the row in the manifest (a folder: the image's rank)
    images: tuple[Path, ...]
    prompt: str
    reference: str | None = None
    tags: tuple[str, ...] = ()
    annotations: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RowProblem:
    line: int
    reason: str


@dataclass
class Manifest:
    rows: list[ManifestRow]
    problems: list[RowProblem]


# What a row may fail with while it is recorded (an image whose body is cut, a generation or
# store error): the row is reported as failed and the run goes on; anything else is a bug.
ROW_ERRORS = (EngineError, StoreError, RuntimeError, ValueError)


@dataclass(frozen=True)
class RowOutcome:
    """What became of one row: ``recorded`` now, ``skipped`` (its trace was stored already),
    or ``failed`` with the reason."""

    line: int
    status: Literal["recorded", "skipped", "failed"]
    trace_id: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class _Invalid:
    """A line or cell that failed to parse, reported when its row is checked."""

    reason: str


def read_manifest(
    source: Path, prompt: str | None = None, *, allow_outside: bool = False
) -> Manifest:
    """Every row of ``source`` checked; ``prompt`` is the shared prompt of a folder."""
    if source.is_dir():
        if prompt is None:
            raise ManifestError(f"{source} is a folder of images: give the prompt (--prompt)")
        raw = _folder_rows(source, prompt)
    elif not source.is_file():
        raise ManifestError(f"manifest not found: {source}")
    elif prompt is not None:
        raise ManifestError("--prompt is for a folder of images; a manifest row has its own")
    else:
        raw = _file_rows(source)
    base = (source if source.is_dir() else source.parent).resolve()
    manifest = Manifest([], [])
    for line, fields in raw:
        try:
            manifest.rows.append(_row(line, fields, base, allow_outside))
        except (EngineError, ValueError, TypeError) as error:
            manifest.problems.append(RowProblem(line, str(error)))
    if not manifest.rows:
        reasons = "; ".join(f"line {p.line}: {p.reason}" for p in manifest.problems[:3])
        raise ManifestError(f"no valid row in {source}" + (f" ({reasons})" if reasons else ""))
    return manifest


def _folder_rows(folder: Path, prompt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for rank, path in enumerate(images, start=1):
        yield rank, {"image": path.name, "prompt": prompt}


def _file_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | _Invalid]]:
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise ManifestError(f"{path.name}: a manifest is a .jsonl or .csv file, or a folder")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"cannot read the manifest {path}: {error}") from None
    if suffix == ".jsonl":
        return _jsonl_rows(text)
    return _csv_rows(text, path)


def _jsonl_rows(text: str) -> Iterator[tuple[int, dict[str, Any] | _Invalid]]:
    for line, content in enumerate(text.splitlines(), start=1):
        if not content.strip():
            continue
        try:
            value = json.loads(content)
        except json.JSONDecodeError as error:
            yield line, _Invalid(f"not JSON ({error.msg})")
            continue
        yield line, value if isinstance(value, dict) else _Invalid("not a JSON object")


def _csv_rows(text: str, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(text.splitlines(keepends=True))
    header = set(reader.fieldnames or ())
    if not {"image", "prompt"} <= header:
        raise ManifestError(f"{path.name}: the CSV header needs 'image' and 'prompt' columns")
    for record in reader:
        fields: dict[str, Any] = {k: v for k, v in record.items() if k and v not in (None, "")}
        if "tags" in fields:
            fields["tags"] = [t.strip() for t in fields["tags"].split(";") if t.strip()]
        for key in ("boxes", "masks"):
            if key in fields:
                fields[key] = _json_cell(fields[key], key)
        yield reader.line_num, fields


def _json_cell(cell: str, column: str) -> Any:
    try:
        return json.loads(cell)
    except json.JSONDecodeError:
        return _Invalid(f"the {column} column is not JSON")


def _row(
    line: int, fields: dict[str, Any] | _Invalid, base: Path, allow_outside: bool
) -> ManifestRow:
    if isinstance(fields, _Invalid):
        raise ValueError(fields.reason)
    unknown = set(fields) - COLUMNS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    for value in fields.values():
        if isinstance(value, _Invalid):
            raise ValueError(value.reason)
    names = fields.get("image")
    names = [names] if isinstance(names, str) else names
    if not names or not isinstance(names, list):
        raise ValueError("'image' must be a path or a list of paths")
    if not isinstance(fields.get("prompt"), str):
        raise ValueError("'prompt' must be text")
    reference = fields.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise ValueError("'reference' must be text")
    tags = fields.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError("'tags' must be a list of text")
    annotations = {}
    if "boxes" in fields:
        annotations["boxes"] = _boxes(fields["boxes"])
    if "masks" in fields:
        masks = fields["masks"]
        if not isinstance(masks, list):
            raise ValueError("'masks' must be a list of paths")
        for mask in masks:
            _image_path(mask, base, allow_outside)
        annotations["masks"] = masks
    return ManifestRow(
        line=line,
        images=tuple(_image_path(name, base, allow_outside) for name in names),
        prompt=check_prompt(fields["prompt"]),
        reference=check_reference(reference),
        tags=tuple(check_tags(tags)),
        annotations=annotations,
    )


def _image_path(name: object, base: Path, allow_outside: bool) -> Path:
    """The image file ``name`` names, under the path rule of the module docstring; its header
    is read so that an unreadable file is a bad row now, not a failure after loading."""
    if not isinstance(name, str) or not name:
        raise ValueError("an image path must be non-empty text")
    given = Path(name)
    if given.is_absolute() and not allow_outside:
        raise ValueError(f"absolute image path {name!r} refused (--allow-outside permits it)")
    path = (base / given).resolve()
    if not allow_outside and not path.is_relative_to(base):
        raise ValueError(
            f"image path {name!r} leads outside the manifest's folder (--allow-outside permits it)"
        )
    if not path.is_file():
        raise ValueError(f"image file not found: {name}")
    try:
        with Image.open(path) as opened:
            opened.size  # noqa: B018 - reading the header is the check
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{name} is not a readable image ({error})") from None
    return path


def _boxes(value: object) -> list[list[float]]:
    if not isinstance(value, list):
        raise ValueError("'boxes' must be a list of [x0, y0, x1, y1]")
    boxes = []
    for box in value:
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
            and all(math.isfinite(v) for v in box)
            and box[0] < box[2]
            and box[1] < box[3]
        ):
            raise ValueError(f"box {box!r} is not [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
        boxes.append([float(v) for v in box])
    return boxes


def row_images(row: ManifestRow) -> tuple[ImageInput, ...]:
    """The row's images read in full and hashed: a body cut short fails here (torch-free, so a
    pipeline can read images in processes that never load a model)."""
    return tuple(load_image(path) for path in row.images)


def row_request(
    row: ManifestRow,
    options: RecordOptions,
    extra_tags: tuple[str, ...] = (),
    lossy: str | None = None,
    images: tuple[ImageInput, ...] | None = None,
) -> RecordRequest:
    """The request that records ``row`` (its ``images`` when read already): the run's tags
    after the row's own, its annotations kept as ``extra["annotations"]``."""
    from engine.recording import RecordRequest

    return RecordRequest(
        row_images(row) if images is None else images,
        row.prompt,
        options,
        reference=row.reference,
        tags=tuple(dict.fromkeys(row.tags + extra_tags)),
        extra={"annotations": row.annotations} if row.annotations else {},
        lossy=lossy,
    )


def record_row(
    store: TraceStore,
    loaded: LoadedModel,
    row: ManifestRow,
    options: RecordOptions,
    extra_tags: tuple[str, ...] = (),
    lossy: str | None = None,
) -> RowOutcome:
    """Record ``row`` into ``store`` once (engine/recording.py); a failure is its outcome."""
    from engine.recording import record_into_store

    try:
        recorded = record_into_store(store, loaded, row_request(row, options, extra_tags, lossy))
    except ROW_ERRORS as error:
        return RowOutcome(row.line, "failed", reason=str(error))
    return RowOutcome(row.line, "skipped" if recorded.skipped else "recorded", recorded.trace_id)
