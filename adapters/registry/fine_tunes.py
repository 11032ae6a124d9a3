"""Jobs created through OpenAI's fine-tuning API (what they asked for), and the ft: model ids naming versions."""

from __future__ import annotations

import contextlib
from typing import Protocol

from adapters.errors import NotFound
from adapters.registry.keys import fine_tuned_model_key
from adapters.schema import FineTune, FineTunedModel, check_job_id
from adapters.store import ObjectStore


class _Deletes(Protocol):
    def fine_tuned_model(self, model_id: str) -> FineTunedModel: ...
    def delete(self, name: str, version: str | None = None) -> list[str]: ...

    @property
    def store(self) -> ObjectStore: ...


class FineTuneBook:
    """OpenAI fine-tuning records beside the jobs and versions they name."""

    store: ObjectStore

    def put_fine_tune(self, fine_tune: FineTune) -> None:
        self.store.put_bytes(f"fine_tunes/{check_job_id(fine_tune.job_id)}.json", fine_tune.model_dump_json().encode())

    def get_fine_tune(self, job_id: str) -> FineTune | None:
        """What a job created through the OpenAI API asked for; None for a job created through POST /adapters."""
        try:
            return FineTune.model_validate_json(self.store.get_bytes(f"fine_tunes/{check_job_id(job_id)}.json"))
        except NotFound:
            return None

    def put_fine_tuned_model(self, model: FineTunedModel) -> None:
        self.store.put_bytes(fine_tuned_model_key(model.id), model.model_dump_json(indent=2).encode())

    def fine_tuned_model(self, model_id: str) -> FineTunedModel:
        """The adapter version an ft: model id names (published or not yet); NotFound if it names none."""
        try:
            return FineTunedModel.model_validate_json(self.store.get_bytes(fine_tuned_model_key(model_id)))
        except NotFound:
            raise NotFound(f"The model `{model_id}` does not exist.") from None

    def fine_tuned_models(self) -> list[FineTunedModel]:
        models = []
        for key in self.store.list("ft_models/"):
            with contextlib.suppress(NotFound):
                models.append(FineTunedModel.model_validate_json(self.store.get_bytes(key)))
        return sorted(models, key=lambda m: m.id)

    def delete_fine_tuned_model(self: _Deletes, model_id: str) -> FineTunedModel:
        """Forget an ft: model id (new requests get 404 at once), then unpublish the version it named."""
        model = self.fine_tuned_model(model_id)
        self.store.delete(fine_tuned_model_key(model_id))
        with contextlib.suppress(NotFound):
            self.delete(model.name, model.version)
        return model
