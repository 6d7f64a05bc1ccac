"""Gradient x input attributions of the logit, per modality, JSON-serialisable.

* image: |grad x input| on the model-resolution pixels, resized back to the original
  image's aspect (bilinear) and scaled to [0, 1]; capped at ``max_heatmap_side``
  pixels on the long side (the predictor's default: the model's input side), the
  returned ``shape`` and the original ``image_shape`` both being reported.
* notes: per token, the sum over the embedding of grad x input (signed: positive raises
  the risk), with the token strings.
* observations: per lab or vital token, the sum of grad x input of its token embedding
  (signed), with the observation it came from.
* demographics: the same for the age and sex tokens.

Gradient x input is a first-order explanation (Shrikumar et al., 2016): it shows what
the model is locally sensitive to, not a causal effect.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from fusion.batch import Batch
from fusion.features import EncodedBundle
from fusion.inputs import BundleInput
from fusion.model.network import Captured


def _round(values: np.ndarray, digits: int = 5) -> list[Any]:
    out: list[Any] = np.round(values.astype(np.float64), digits).tolist()
    return out


def _token_scores(tokens: torch.Tensor | None) -> np.ndarray | None:
    """Per-token grad x input summed over the width, or None without a gradient."""
    if tokens is None or tokens.grad is None:
        return None
    scores: np.ndarray = (tokens.grad * tokens).sum(-1).detach().float().cpu().numpy()
    return scores


def image_heatmap(
    pixel_grad: torch.Tensor, pixels: torch.Tensor, shape: tuple[int, int], max_side: int
) -> dict[str, Any]:
    """Heatmap of one image: |grad x input| resized to ``shape`` (capped at ``max_side``).

    Args:
        pixel_grad: (S, S) gradient of the logit w.r.t. the model-input pixels.
        pixels: (S, S) model-input pixels.
        shape: Original (rows, columns).
        max_side: Largest side returned, pixels.

    Returns:
        ``heatmap`` (rows of floats in [0, 1]), ``shape`` (returned size),
        ``image_shape`` (original size) and ``method``.
    """
    saliency = (pixel_grad * pixels).abs().float()
    scale = min(1.0, max_side / max(shape))
    out_shape = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
    resized = F.interpolate(saliency[None, None], size=out_shape, mode="bilinear")[0, 0]
    peak = float(resized.max())
    if peak > 0:
        resized = resized / peak
    return {
        "method": "gradient_x_input",
        "heatmap": _round(resized.cpu().numpy(), 4),
        "shape": list(out_shape),
        "image_shape": list(shape),
    }


def explain(
    batch: Batch,
    captured: Captured,
    encoded: list[EncodedBundle],
    inputs: list[BundleInput],
    max_heatmap_side: int = 512,
) -> list[dict[str, Any]]:
    """Attributions of every bundle of a batch after ``logits.sum().backward()``.

    Args:
        batch: The batch that was run, ``batch.image`` with a gradient.
        captured: Tensors captured by the forward pass.
        encoded: The encoded bundles of the batch, in batch order.
        inputs: The original inputs, in batch order.
        max_heatmap_side: Largest heatmap side, pixels. Defaults to 512.

    Returns:
        One JSON-serialisable dict per bundle with keys ``image``, ``notes``,
        ``observations`` and ``demographics`` (None for an absent modality).
    """
    results: list[dict[str, Any]] = []
    image_grad = batch.image.grad
    presence = batch.presence().cpu().numpy()
    note_scores = _token_scores(captured.note_embeds)
    obs_scores = _token_scores(captured.obs_tokens)
    demo_scores = _token_scores(captured.demo_tokens)
    obs_mask = batch.obs_mask.cpu().numpy()
    for b, (item, source) in enumerate(zip(encoded, inputs, strict=True)):
        result: dict[str, Any] = {
            "method": "gradient_x_input on the logit",
            "image": None,
            "notes": None,
            "observations": [],
            "demographics": None,
        }
        if presence[b, 0] and image_grad is not None and item.image_shape is not None:
            result["image"] = image_heatmap(
                image_grad[b, 0].detach(),
                batch.image[b, 0].detach(),
                item.image_shape,
                max_heatmap_side,
            )
        if presence[b, 1] and note_scores is not None:
            n = len(item.note_tokens)
            result["notes"] = [
                {"token": token, "score": round(float(score), 5)}
                for token, score in zip(item.note_tokens, note_scores[b, :n], strict=True)
            ]
        for k, origin in enumerate(item.obs_source.tolist()):
            if not obs_mask[b, k]:
                continue
            obs = source.observations[origin]
            result["observations"].append(
                {
                    "index": origin,
                    "code_system": obs.code_system,
                    "code": obs.code,
                    "value": obs.value,
                    "unit": obs.unit,
                    "relative_seconds": obs.relative_seconds,
                    "category": obs.category,
                    "contribution": 0.0
                    if obs_scores is None
                    else round(float(obs_scores[b, k]), 5),
                }
            )
        if item.has_demographics and demo_scores is not None:
            result["demographics"] = {
                "age": round(float(demo_scores[b, 0]), 5),
                "sex": round(float(demo_scores[b, 1]), 5),
            }
        results.append(result)
    return results
