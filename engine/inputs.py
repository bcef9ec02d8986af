"""Validate the user's image and prompt before any model code sees them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from engine.errors import ImageError, PromptError

MAX_IMAGE_PIXELS = 64_000_000  # beyond this a file is more likely a decompression bomb than a photo
MAX_PROMPT_CHARS = 8_000
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class ImageInput:
    image: Image.Image  # RGB
    name: str
    sha256: str

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def load_image(source: str | Path | Image.Image, name: str | None = None) -> ImageInput:
    """Open and fully decode an image, so a truncated file fails here and not mid-recording."""
    if isinstance(source, Image.Image):
        image = source
        name = name or "image"
        digest = hashlib.sha256(image.tobytes()).hexdigest()
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"Image file not found: {path}. Check the path.")
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        name = name or path.name
        try:
            with Image.open(path) as opened:
                if opened.width * opened.height > MAX_IMAGE_PIXELS:
                    raise ImageError(
                        f"{path.name} is {opened.width}x{opened.height} pixels, over the "
                        f"{MAX_IMAGE_PIXELS:,}-pixel limit; downscale it first."
                    )
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise ImageError(
                f"{path.name} is not a readable image ({error}). Use a PNG, JPEG, WebP, BMP "
                "or GIF file."
            ) from error
    if image.width < 1 or image.height < 1:
        raise ImageError(f"{name} is empty (0 pixels).")
    return ImageInput(image.convert("RGB"), name, digest)


def check_prompt(prompt: str) -> str:
    """The user's question, stripped; the chat template adds the image placeholder itself."""
    text = prompt.strip()
    if not text:
        raise PromptError("The prompt is empty: ask a question about the image.")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(
            f"The prompt has {len(text)} characters; the limit is {MAX_PROMPT_CHARS}."
        )
    if IMAGE_PLACEHOLDER in text:
        raise PromptError(
            f"Remove {IMAGE_PLACEHOLDER!r} from the prompt: the model's chat template places the "
            "image itself, and a second placeholder would not match the one image given."
        )
    return text


def chat_text(processor, prompt: str) -> str:
    """The model's own chat template around one image and the prompt."""
    if getattr(processor, "chat_template", None) is None:
        raise PromptError(
            "This processor has no chat template, so the image cannot be placed in the prompt. "
            "Use a chat (instruction-tuned) checkpoint, or set processor.chat_template."
        )
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)
