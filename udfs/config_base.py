"""The base of every config section: frozen, strict (an unknown key is an error naming it), and each
field's attribute docstring its description (the sample file and --help read it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
