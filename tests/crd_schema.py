"""Validate a custom resource against the OpenAPI schema its CRD publishes (the vendored files in tests/crds/).

The API server checks a custom resource against the CRD's `openAPIV3Schema` and, with strict field validation
(`kubectl apply --validate=strict`), refuses fields the schema does not name; both are done here with jsonschema.
Not done here: defaulting and the CEL rules (`x-kubernetes-validations`), which tests check by hand where they
matter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parent / "crds"


def _strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever the CRD lists an object's properties."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schema(filename: str, version: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / filename).read_text())
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return dict(_strict(served["schema"]["openAPIV3Schema"]))
    raise KeyError(f"{filename} has no version {version}")


def validate(doc: dict[str, Any], filename: str) -> None:
    """Raise jsonschema.ValidationError when `doc` breaks its CRD's schema (the version named by apiVersion)."""
    crd = yaml.safe_load((CRDS / filename).read_text())
    group, version = doc["apiVersion"].split("/")
    assert (group, doc["kind"]) == (crd["spec"]["group"], crd["spec"]["names"]["kind"]), "wrong CRD for this kind"
    jsonschema.validate(doc, crd_schema(filename, version))
