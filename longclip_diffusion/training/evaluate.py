"""Evaluation: text↔image retrieval R@1/5/10 on long and short captions, and zero-shot classification."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from transformers import CLIPModel

from .. import tokenizer
from .data import CaptionCollator, batches, trim_padding
from .model import context_length

DEFAULT_TEMPLATES = ("a photo of a {}.",)

logger = logging.getLogger(__name__)


def recall_at_k(image_features: torch.Tensor, text_features: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Retrieval recall in percent; pair ``i`` (image ``i``, text ``i``) is the only match.

    ``i2t@k``: share of images whose own text is among their ``k`` most similar texts; ``t2i@k`` the converse.
    """
    similarity = image_features.float() @ text_features.float().T
    targets = torch.arange(similarity.shape[0])
    metrics = {}
    for direction, scores in (("i2t", similarity), ("t2i", similarity.T)):
        own = scores[targets, targets].unsqueeze(1)
        rank = (scores > own).sum(dim=1)  # how many candidates beat the true one
        for k in ks:
            metrics[f"{direction}@{k}"] = 100.0 * (rank < k).float().mean().item()
    return metrics


@torch.no_grad()
def encode_images_and_texts(
    model: CLIPModel, dataset: Dataset, batch_size: int = 64, num_workers: int = 0, progress: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalised image, long-caption and short-caption features; captions are cut to the model's context length
    (counted and logged). An unreadable image raises ``ValueError`` naming it: a replaced sample would skew the metrics.

    ``progress``: a progress bar on stderr (``None``: only when stderr is a terminal).
    """
    model.eval()
    device = next(model.parameters()).device
    length = context_length(model)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=CaptionCollator(length))
    images, longs, shorts = [], [], []
    long_cut = 0
    for batch in tqdm(batches(loader), total=len(loader), desc="eval", unit="batch", disable=None if progress is None else not progress):
        if batch["problems"]:
            raise ValueError(f"{batch['problems'][0]}; fix or remove it from the evaluation data")
        long_cut += batch["long_cut"]
        images.append(_features(model.get_image_features(pixel_values=batch["pixel_values"].to(device))))
        longs.append(_features(model.get_text_features(input_ids=batch["long_ids"].to(device))))
        shorts.append(_features(model.get_text_features(input_ids=batch["short_ids"].to(device))))
    if long_cut:
        logger.info("%d of %d long captions were longer than the model's %d tokens and were cut", long_cut, len(dataset), length)
    return torch.cat(images), torch.cat(longs), torch.cat(shorts)


def _features(output: object) -> torch.Tensor:
    tensor = output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]
    return F.normalize(tensor.float(), dim=-1).cpu()


def evaluate_retrieval(model: CLIPModel, dataset: Dataset, batch_size: int = 64, num_workers: int = 0) -> dict[str, dict[str, float]]:
    """``{"long": recall…, "short": recall…}`` over ``dataset`` (items ``(pixels, long caption, short caption)``)."""
    image, long_text, short_text = encode_images_and_texts(model, dataset, batch_size, num_workers)
    return {"long": recall_at_k(image, long_text), "short": recall_at_k(image, short_text)}


@torch.no_grad()
def zero_shot_classification(
    model: CLIPModel,
    dataset: Dataset,
    labels: Sequence[str],
    classes: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 64,
) -> dict[str, float]:
    """Top-1/top-5 accuracy (percent) of picking each image's class by its mean prompt embedding.

    ``labels[i]`` is the class name of ``dataset[i]``; each must be in ``classes``.
    """
    missing = sorted(set(labels) - set(classes))
    if missing:
        raise ValueError(f"labels not in the class list: {', '.join(missing[:5])}")
    model.eval()
    device = next(model.parameters()).device
    length = context_length(model)
    class_features = []
    for name in classes:
        ids = trim_padding(tokenizer.tokenize([template.format(name) for template in templates], context_length=length))
        mean = _features(model.get_text_features(input_ids=ids.to(device))).mean(dim=0)
        class_features.append(F.normalize(mean, dim=-1))
    class_matrix = torch.stack(class_features)
    image, _, _ = encode_images_and_texts(model, dataset, batch_size)
    scores = image @ class_matrix.T
    targets = torch.tensor([list(classes).index(label) for label in labels])
    top = scores.topk(min(5, len(classes)), dim=1).indices
    return {
        "top1": 100.0 * (top[:, 0] == targets).float().mean().item(),
        "top5": 100.0 * (top == targets.unsqueeze(1)).any(dim=1).float().mean().item(),
    }
