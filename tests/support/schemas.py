"""Validators for the JSON Schemas of the topics' records (docs/schemas/), refs resolved among the files."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
NAMES = ("event", "list", "feedback", "dead_letter")


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text())


def validator(name: str) -> jsonschema.Draft202012Validator:
    """``name``'s validator; a ``$ref`` to another file resolves by its name, as tools reading the folder do."""
    registry: Registry = Registry().with_resources(
        (p.name, Resource.from_contents(json.loads(p.read_text()))) for p in SCHEMAS.glob("*.schema.json"))
    return jsonschema.Draft202012Validator(schema(name), registry=registry)
