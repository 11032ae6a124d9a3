"""`python -m docsgen.openapi` prints the gateway's OpenAPI document as YAML (the repo's openapi.yaml)."""

from __future__ import annotations

import yaml

from service.app import create_app
from service.settings import Settings


def render() -> str:
    """The served API as YAML; built from a fresh app whose lifespan never runs, so nothing starts."""
    schema = create_app(Settings(_env_file=None)).openapi()  # type: ignore[call-arg]
    return yaml.safe_dump(schema, sort_keys=False, allow_unicode=True, width=110)


if __name__ == "__main__":
    print(render(), end="")
