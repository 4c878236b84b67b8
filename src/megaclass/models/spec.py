"""``BackboneSpec``: how to rebuild a backbone, a factory name and its keyword arguments, kept as
JSON beside the weights (``model.json`` of a run, ``manifest.json`` of an export) so that a
trained model loads without its training configuration or data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from megaclass.models.mlp import MLP
from megaclass.models.sasrec import SASRec
from megaclass.plugins import load_object

BUILT_IN = {"mlp": MLP, "sasrec": SASRec}


@dataclass(frozen=True)
class BackboneSpec:
    """factory: ``"mlp"``, ``"sasrec"`` or ``"package.module:function"`` (called with
    ``kwargs`` as keyword arguments, returning an ``nn.Module``); kwargs: JSON values only;
    tie_item_embeddings: the backbone takes the head's class rows as its input item vectors
    (``SASRec``'s ``item_lookup``), so it is built with the head."""

    factory: str
    kwargs: dict = field(default_factory=dict)
    tie_item_embeddings: bool = False

    def build(self, item_lookup: Callable[[torch.Tensor], torch.Tensor] | None = None) -> nn.Module:
        if self.tie_item_embeddings and item_lookup is None:
            raise ValueError(
                f"backbone {self.factory!r} ties its item embeddings: pass item_lookup"
            )
        extra = {"item_lookup": item_lookup} if self.tie_item_embeddings else {}
        factory = BUILT_IN.get(self.factory) or load_object(self.factory, "backbone factory")
        model = factory(**self.kwargs, **extra)
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"backbone factory {self.factory!r} returned {type(model).__name__}, not a Module"
            )
        return model

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict) -> BackboneSpec:
        try:
            return cls(**values)
        except TypeError as error:
            raise ValueError(f"not a backbone description: {values!r} ({error})") from None
