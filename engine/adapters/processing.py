"""What adapters read from an image processor's settings: which part of an input a processed
image shows after the processor's resize and centre crop (LLaVA-1.5's one image, each of
LLaVA-NeXT's and OneVision's tiles), with the processor's own integer arithmetic.
"""

from __future__ import annotations

from transformers.image_processing_utils import BaseImageProcessor

from engine.errors import UnsupportedModelError
from engine.geometry import Box


def shown_part(image_processor: BaseImageProcessor, height: int, width: int) -> Box:
    """Which part of a ``height x width`` input (its own pixels) the processed image shows
    after the resize (``get_resize_output_image_size``: a fixed size, or the shortest edge
    with the long side truncated) and the centre crop (offsets rounded down); the whole input
    where neither applies."""
    size = image_processor.size
    out_h, out_w = height, width
    if getattr(image_processor, "do_resize", False):
        if size.height and size.width:
            out_h, out_w = size.height, size.width
        elif size.shortest_edge:  # get_resize_output_image_size, default_to_square=False
            short, long = sorted((height, width))
            new_short, new_long = size.shortest_edge, int(size.shortest_edge * long / short)
            out_h, out_w = (new_short, new_long) if height <= width else (new_long, new_short)
        else:
            raise UnsupportedModelError(f"an image processor resize size {size} is not supported")
    left, top, right, bottom = 0, 0, out_w, out_h
    crop = getattr(image_processor, "crop_size", None)
    if getattr(image_processor, "do_center_crop", False) and crop and crop.height:
        if crop.height > out_h or crop.width > out_w:
            raise UnsupportedModelError("a centre crop larger than the resized image (padding)")
        top, left = (out_h - crop.height) // 2, (out_w - crop.width) // 2
        bottom, right = top + crop.height, left + crop.width
    sx, sy = width / out_w, height / out_h
    return (left * sx, top * sy, right * sx, bottom * sy)


def crop_side(image_processor: BaseImageProcessor) -> int:
    """The side of the square the processor makes of each image (or tile): its crop size
    where it crops, else its resize size."""
    crop, size = getattr(image_processor, "crop_size", None), image_processor.size
    if crop and crop.height:
        return int(crop.height)
    return int(size.height or size.shortest_edge)
