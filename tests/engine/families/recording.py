"""Recording a built family through ``lvlm-interpret record``, as a user would: the CLI
tests of every family save their images and run the same command."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from engine.cli import app as cli


def save_images(images: Sequence[Image.Image], folder: Path) -> list[Path]:
    """``images`` as ``image{i}.png`` files in ``folder``."""
    paths = [folder / f"image{i}.png" for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        image.save(path)
    return paths


def record_with_cli(
    model_folder: Path, image_files: Sequence[Path], prompt: str, store: Path, new_tokens: int
) -> str:
    """Runs ``record`` on the files; asserts it succeeds and returns the trace id it prints."""
    images = [arg for path in image_files for arg in ("--image", str(path))]
    result = CliRunner().invoke(
        cli,
        ["record", "--model", str(model_folder), *images, "--prompt", prompt,
         "--store", str(store), "--max-new-tokens", str(new_tokens)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]
