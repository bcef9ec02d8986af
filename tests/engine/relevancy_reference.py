"""A slow, obviously-correct relevancy reference, written straight from Chefer et al. 2021.

Deliberately shares no code with ``engine.relevancy``: for each answer token it runs a fresh
forward over the prefix that produced it (no KV cache, no hooks: the model's own
``output_attentions``), assembles inputs_embeds by hand, takes gradients with autograd and
multiplies full T x T matrices:

    Ā_l = E_h[(∇A_l ⊙ A_l)⁺]            (eq. 5)
    R ← R + Ā_l · R, from R = I          (eq. 6)
    row normalisation of R - I           (eqs. 8-9)

and the two image modes as the seed tool (IntelLabs LVLM-Interpret) defines them: ``all`` builds
the seed's ``R_all = R_vit · pad(R_LM[img, img])`` (CLS padded with a 1 on the diagonal) and
reads its CLS row; ``llm_through_vision`` (this project's) pushes the answer token's LM row
over the image tokens through ``R_vit``.
"""

from __future__ import annotations

import numpy as np
import torch


def _full_relevancy(attentions, gradients) -> torch.Tensor:
    size = attentions[0].shape[-1]
    relevancy = torch.eye(size, dtype=torch.float64)
    for attention, gradient in zip(attentions, gradients, strict=True):
        cam = (gradient.double() * attention.double()).clamp(min=0)[0].mean(dim=0)
        relevancy = relevancy + cam @ relevancy
    return relevancy


def _residual_normalised(row: torch.Tensor, own: int) -> torch.Tensor:
    row = row.clone()
    row[own] -= 1
    return row / row.sum() if row.sum() > 0 else row


def reference_relevancy(model, sequence, pixel_values, prompt_length, image_token_id):
    """(llm [N, T], vision [N, G], all [N, G], llm_through_vision [N, G]) per answer token."""
    sequence = torch.as_tensor(sequence)
    pixel_values = pixel_values.clone().requires_grad_(True)  # parameters may be frozen
    llava = model.model
    image_positions = torch.nonzero(sequence == image_token_id).flatten()
    llm_rows, vision_rows, all_rows, through_rows = [], [], [], []
    for k in range(len(sequence) - prompt_length):
        prefix = sequence[: prompt_length + k]
        vision = llava.vision_tower(pixel_values, output_attentions=True, output_hidden_states=True)
        layer = model.config.vision_feature_layer
        features = vision.hidden_states[layer][:, 1:]  # "default" strategy drops CLS
        image_features = llava.multi_modal_projector(features)[0]
        embeds = llava.language_model.embed_tokens(prefix[None]).clone()
        embeds[0, image_positions] = image_features
        lm = llava.language_model(inputs_embeds=embeds, output_attentions=True)
        logit = model.lm_head(lm.last_hidden_state[0, -1])[sequence[prompt_length + k]]
        attentions = [*lm.attentions, *vision.attentions]
        gradients = torch.autograd.grad(logit, attentions)
        num_lm = len(lm.attentions)
        r_lm = _full_relevancy(lm.attentions, gradients[:num_lm])
        r_vit = _full_relevancy(vision.attentions, gradients[num_lm:])
        query = prompt_length + k - 1
        llm = _residual_normalised(r_lm[query], query)
        llm_rows.append(torch.cat([llm, torch.zeros(len(sequence) - len(llm), dtype=llm.dtype)]))
        vision_rows.append(_residual_normalised(r_vit[0], 0)[1:])
        padded = torch.eye(r_vit.shape[0], dtype=torch.float64)
        padded[1:, 1:] = r_lm[image_positions][:, image_positions]
        all_rows.append(_residual_normalised((r_vit @ padded)[0], 0)[1:])
        carried = torch.zeros(r_vit.shape[0], dtype=torch.float64)
        carried[1:] = llm[image_positions]
        spread = (carried @ r_vit)[1:]
        through_rows.append(spread * carried.sum() / spread.sum())
    return tuple(
        torch.stack(rows).detach().numpy().astype(np.float64)
        for rows in (llm_rows, vision_rows, all_rows, through_rows)
    )
