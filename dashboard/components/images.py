"""Image encodings the browser needs: thumbnails and data URLs for tables and Vega charts."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def thumbnail(image: np.ndarray, size: int = 96) -> Image.Image:
    """A small copy that keeps the aspect ratio (non-square images stay non-square)."""
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    picture.thumbnail((size, size))
    return picture


def data_url(picture: Image.Image, fmt: str = "PNG") -> str:
    """Inline ``data:`` URL, so table cells, Vega image marks and heatmaps need no extra
    request. JPEG at quality 90: maps are smooth colour fields, so that is visually lossless
    and encodes several times faster than PNG."""
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, quality=90)
    mime = "jpeg" if fmt.upper() == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
