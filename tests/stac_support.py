"""Offline STAC validation: pystac's own core schemas plus the extension schemas in tests/data."""
from __future__ import annotations

import json
import pathlib

import pystac
import pystac.validation
from pystac.validation.stac_validator import JsonSchemaSTACValidator

SCHEMAS = pathlib.Path(__file__).parent / "data" / "stac-extension-schemas"


class OfflineValidator(JsonSchemaSTACValidator):
    """pystac's JSON-schema validator with every schema held locally; fetching one is an error."""

    def __init__(self) -> None:
        super().__init__()
        for path in SCHEMAS.glob("*.json"):
            schema = json.loads(path.read_text())
            self.schema_cache[schema["$id"].rstrip("#")] = schema

    def _get_schema(self, schema_uri: str) -> dict:
        if schema_uri not in self.schema_cache:
            raise AssertionError(f"schema {schema_uri} is not held locally (tests/data/stac-extension-schemas)")
        return self.schema_cache[schema_uri]


def use_offline_validator() -> None:
    pystac.validation.set_validator(OfflineValidator())
