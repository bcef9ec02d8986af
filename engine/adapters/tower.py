"""Facts about a vision tower that adapters read from its config, in one place: families
spell them differently (InternVL's patch size is a pair) and several families need each one.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PretrainedConfig

from engine.errors import UnsupportedModelError


def _side(value: int | Sequence[int]) -> int:
    """A square side that a config may give as one number or as (height, width)."""
    return int(value[0] if isinstance(value, Sequence) else value)


def patch_size(vision_config: PretrainedConfig) -> int:
    """The side of one patch, in the tower's input pixels."""
    return _side(vision_config.patch_size)


def patches_per_side(vision_config: PretrainedConfig) -> int:
    """Patches along a side of the tower's square input (its patch grid is this squared)."""
    return _side(vision_config.image_size) // patch_size(vision_config)


def feature_layer_depth(feature_layer: int | Sequence[int], total: int) -> int:
    """How many vision layers (from the first) feed the LM when it reads
    ``hidden_states[feature_layer]`` (or several of them): ``hidden_states`` has ``total + 1``
    entries, the embeddings first, so index -1 is the last layer and later layers are unused.
    """
    deepest = max(feature_layer) if isinstance(feature_layer, Sequence) else feature_layer
    return deepest + 1 + total if deepest < 0 else deepest


def check_one_feature_per_patch(family: str, strategy: str, tower_has_cls: bool) -> None:
    """Packings that reshape a tile's features into its patch grid need exactly one feature
    per patch: the CLS feature dropped ("default") where the tower has one, everything kept
    ("full") where it has none. Any other ``vision_feature_select_strategy`` is refused here,
    before a wrong map is built."""
    wanted = "default" if tower_has_cls else "full"
    if strategy != wanted:
        raise UnsupportedModelError(
            f"{family}: vision_feature_select_strategy {strategy!r} with a tower "
            f"{'with' if tower_has_cls else 'without'} a CLS token does not give one "
            f"feature per patch (the model needs {wanted!r})"
        )
