"""The trainable Long-CLIP model: a transformers ``CLIPModel`` whose text position table is split into frozen rows
(a buffer, never seen by the optimizer) and trainable rows (a parameter)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import CLIPModel, CLIPTextModel, CLIPTextModelWithProjection

from .. import positions


class SplitPositionEmbedding(nn.Module):
    """Position table ``cat(frozen, trainable)``: rows below ``keep`` live in a buffer, so no optimizer (and no
    weight decay) can change them; the reference's ``positional_embedding`` / ``positional_embedding_res`` pair."""

    def __init__(self, table: torch.Tensor, keep: int) -> None:
        super().__init__()
        if not 0 <= keep <= table.shape[0]:
            raise ValueError(f"--keep {keep} must lie between 0 and the position table length {table.shape[0]}")
        self.register_buffer("frozen", table[:keep].detach().clone())
        self.trainable = nn.Parameter(table[keep:].detach().clone())

    @property
    def keep(self) -> int:
        return self.frozen.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """The full table (read by transformers for its length check, and by export)."""
        return torch.cat([self.frozen.to(self.trainable.dtype), self.trainable], dim=0)

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(position_ids, self.weight)


def interpolate_positions(table: torch.Tensor, length: int) -> torch.Tensor:
    """Ablation baseline (not KPS): stretch every row uniformly by linear interpolation to ``length`` rows."""
    stretched = F.interpolate(table.T.unsqueeze(0).float(), size=length, mode="linear", align_corners=True)
    return stretched.squeeze(0).T.to(table.dtype).contiguous()


def _text_embeddings(model: CLIPModel) -> nn.Module:
    return model.text_model.embeddings


def _set_text_table(model: CLIPModel, table: torch.Tensor) -> None:
    embeddings = _text_embeddings(model)
    embeddings.position_embedding = nn.Embedding.from_pretrained(table, freeze=False)
    embeddings.position_ids = torch.arange(table.shape[0], device=table.device).expand((1, -1))
    model.config.text_config.max_position_embeddings = table.shape[0]
    model.text_model.config.max_position_embeddings = table.shape[0]


def prepare_for_training(
    model: CLIPModel,
    *,
    stretch: str = "kps",
    keep: int = 20,
    ratio: int = 4,
    logit_scale_init: float | None = math.log(100.0),
) -> CLIPModel:
    """Stretch the text positions of ``model`` (in place) and freeze the rows that must keep CLIP's values.

    ``stretch``: ``"kps"`` (knowledge-preserving stretch from the core, rows ``< keep`` frozen), ``"interpolate"``
    (naive uniform interpolation to the same length, nothing frozen — the ablation baseline) or ``"none"`` (keep the
    table length; rows ``< keep`` frozen). ``logit_scale`` is reset to ``logit_scale_init`` unless that is ``None``.
    """
    table = _text_embeddings(model).position_embedding.weight.detach()
    if stretch == "kps":
        positions.stretch_text_encoder(model, keep=keep, ratio=ratio)
    elif stretch == "interpolate":
        length = positions.StretchConfig(keep=keep, ratio=ratio).stretched_length(table.shape[0])
        _set_text_table(model, interpolate_positions(table, length))
        keep = 0
    elif stretch != "none":
        raise ValueError(f"unknown stretch method {stretch!r}; use kps, interpolate or none")
    embeddings = _text_embeddings(model)
    embeddings.position_embedding = SplitPositionEmbedding(embeddings.position_embedding.weight.detach(), keep)
    if logit_scale_init is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale_init)
    return model


def context_length(model: CLIPModel) -> int:
    """Number of text positions the model reads."""
    return int(_text_embeddings(model).position_embedding.weight.shape[0])


def merged_model(model: CLIPModel) -> CLIPModel:
    """A plain ``CLIPModel`` copy (ordinary ``nn.Embedding`` position table) for export and evaluation."""
    plain = copy.deepcopy(model)
    embedding = _text_embeddings(plain).position_embedding
    if isinstance(embedding, SplitPositionEmbedding):
        _set_text_table(plain, embedding.weight.detach().clone())
    return plain


def text_encoder_from_clip(model: CLIPModel, with_projection: bool = False) -> CLIPTextModel | CLIPTextModelWithProjection:
    """The text tower of ``model`` as a stand-alone ``CLIPTextModel`` (what Stable Diffusion's ``text_encoder`` is), or
    with ``with_projection`` a ``CLIPTextModelWithProjection`` (SDXL's ``text_encoder_2``, a bigG: pooled, projected)."""
    plain = merged_model(model)
    if not with_projection:
        encoder = CLIPTextModel(plain.config.text_config)
        encoder.load_state_dict(plain.text_model.state_dict())
        return encoder.to(plain.dtype).eval()
    config = copy.deepcopy(plain.config.text_config)
    config.projection_dim = plain.config.projection_dim
    encoder = CLIPTextModelWithProjection(config)
    encoder.text_model.load_state_dict(plain.text_model.state_dict())
    encoder.text_projection.load_state_dict(plain.text_projection.state_dict())
    return encoder.to(plain.dtype).eval()


class LongCLIPFeatures(nn.Module):
    """Wraps ``CLIPModel`` so that one ``forward`` yields all features of a step (what DDP needs to sync gradients)."""

    def __init__(self, model: CLIPModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, pixel_values: torch.Tensor, long_ids: torch.Tensor, short_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """L2-normalised image, long-caption and short-caption features, and the logit scale parameter."""
        image = F.normalize(_as_tensor(self.model.get_image_features(pixel_values=pixel_values)), dim=-1)
        long_text = self.encode_text(long_ids)
        short_text = None if short_ids is None else self.encode_text(short_ids)
        return image, long_text, short_text, self.model.logit_scale

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected text features. Trim the padding of ``ids`` on the host first
        (:func:`~.data.trim_padding`; the collator does): trimming here, on a GPU, would make the host wait for it."""
        return F.normalize(_as_tensor(self.model.get_text_features(input_ids=ids)), dim=-1)


def _as_tensor(output: object) -> torch.Tensor:
    """``get_*_features`` returns a tensor in older transformers and an output object with ``pooler_output`` in 5.x."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output  # type: ignore[attr-defined]
