"""Structured results parsed from Face-LLaVA's free-text answers.

The value types below are part of the `FaceEvent` wire format; the parsers turn an
answer text into one of them, or `None` when the text says nothing we can trust.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class Task(StrEnum):
    """A question we ask of a face."""

    EMOTION = "emotion"
    AGE = "age"
    ATTRIBUTES = "attributes"
    ACTION_UNITS = "action_units"


class EmotionResult(BaseModel):
    """One of the closed emotion vocabulary (`EMOTIONS`), and the word the model used."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["emotion"] = "emotion"
    label: str
    matched_text: str


class AgeResult(BaseModel):
    """An age estimate in years; a range answer keeps its bounds and gives its middle."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["age"] = "age"
    years: float
    range_years: tuple[float, float] | None = None


class AttributesResult(BaseModel):
    """CelebA attribute names the description asserts (`present`) or denies (`absent`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["attributes"] = "attributes"
    present: list[str]
    absent: list[str] = []


class ActionUnit(BaseModel):
    """A FACS action unit: its number and canonical name."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    number: int
    name: str


class ActionUnitsResult(BaseModel):
    """The action units the answer names as active."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["action_units"] = "action_units"
    units: list[ActionUnit]


TaskResult = Annotated[
    EmotionResult | AgeResult | AttributesResult | ActionUnitsResult,
    Field(discriminator="kind"),
]
