"""The shape of `tread_config` (TREAD token routing); routes are resolved against the model in
k5tune.models.kandinsky5.tread."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TreadRoute(BaseModel):
    model_config = ConfigDict(extra="forbid")

    selection_ratio: float = Field(..., gt=0.0, lt=1.0, description="Share of video tokens routed past the blocks.")
    start_layer_idx: int = Field(..., description="First routed block (negative counts from the end).")
    end_layer_idx: int = Field(..., description="Last routed block (negative counts from the end).")


class TreadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    routes: list[TreadRoute] = Field(..., min_length=1, description="One or more token routes.")
