"""Validate the user's image, prompt and settings before any model code sees them."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from engine.errors import ImageError, InputError, PromptError
from store import check_name  # the store's own tag rule, applied before recording
from store.errors import InvalidName
from store.schema import GenerationSettings

MAX_IMAGE_PIXELS = 64_000_000  # beyond this a file is more likely a decompression bomb than a photo
MAX_PROMPT_CHARS = 8_000
IMAGE_PLACEHOLDER = "<image>"
# A trace keeps L*H*T*T attention values: 512 answer tokens after a 600-token LLaVA prompt
# are already ~2.5 GB raw for a 7B model, so longer answers are capped, not recorded.
MAX_NEW_TOKENS = 512
MAX_SEED = 2**63 - 1  # a signed 64-bit integer: what torch and SQL both hold


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
        name = check_text(name or path.name, "The image file name")
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
    text = check_text(prompt, "The prompt").strip()
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


def check_text(value: str, what: str) -> str:
    """``value`` if it is Unicode text.

    Bytes that are not UTF-8 reach Python's ``sys.argv`` as lone surrogates, which no
    tokenizer, HDF5 file or database can take; they are refused here, before any work.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise InputError(
            f"{what} {shown!r} contains bytes that are not UTF-8 text; pass it as UTF-8."
        ) from None
    return value


def check_reference(reference: str | None) -> str | None:
    """The expected answer, if given: UTF-8 text within the prompt's length limit."""
    if reference is None:
        return None
    text = check_text(reference, "The reference answer").strip()
    if not text or len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"The reference answer must have 1-{MAX_PROMPT_CHARS} characters.")
    return text


def check_tags(tags: Iterable[str]) -> list[str]:
    """Tags as the store will keep them (NFC, no control characters), checked up front."""
    try:
        return [check_name(check_text(tag, "The tag"), "tag") for tag in tags]
    except InvalidName as error:
        raise InputError(str(error)) from None


def check_generation(settings: GenerationSettings) -> GenerationSettings:
    """``settings`` if generate() can honour them and the store can record them."""
    if not 1 <= settings.max_new_tokens <= MAX_NEW_TOKENS:
        raise InputError(
            f"max_new_tokens must be 1-{MAX_NEW_TOKENS}, not {settings.max_new_tokens}."
        )
    if not 0 <= settings.seed <= MAX_SEED:
        raise InputError(f"The seed must be 0-{MAX_SEED} (2**63 - 1), not {settings.seed}.")
    temperature = settings.temperature
    if (
        not math.isfinite(temperature)
        or temperature < 0
        or (settings.do_sample and not temperature)
    ):
        raise InputError(
            f"The temperature must be a finite number above 0 for sampling, not {temperature}; "
            "for greedy decoding leave out --sample."
        )
    if not 0 <= settings.top_p <= 1:  # also refuses nan
        raise InputError(f"top_p must be 0-1, not {settings.top_p}.")
    return settings
