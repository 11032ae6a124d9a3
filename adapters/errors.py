"""One exception hierarchy for the adapter domain; the gateway maps it to OpenAI error bodies at the edge."""

from __future__ import annotations


class SkillserveError(Exception):
    """Base of every error skillserve raises on purpose."""

    code: str | None = "skillserve_error"  # OpenAI's error `code`; None where OpenAI gives none

    def __init__(self, *args: object, param: str | None = None):
        super().__init__(*args)
        self.param = param  # the request field at fault, when one is: the edge reports it as OpenAI's `param`


class InvalidName(SkillserveError, ValueError):
    """An adapter name, version, job id or store URI that could escape its place in the store."""

    code = "invalid_name"


class NotFound(SkillserveError, KeyError):
    """A key, adapter, version or job that does not exist."""

    code = "not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class ModelNotFound(NotFound):
    """A model name (base, adapter, `name@version`, alias, `ft:` id) this service does not serve."""

    code = "model_not_found"

    def __init__(self, model: str):
        super().__init__(f"The model `{model}` does not exist.", param="model")
        self.model = model


class AlreadyExists(SkillserveError):
    """A conditional write lost: the object is already there."""

    code = "already_exists"


class Conflict(SkillserveError):
    """A conditional write lost: the object changed (or went) since it was read; read it again and retry."""

    code: str | None = "conflict"


class RunFinished(Conflict):
    """An eval run that has already finished, asked to do what only a queued or running run can (be canceled)."""

    code = "run_finished"


class BatchNotCancellable(Conflict):
    """A batch past running (finalizing, or finished), asked to be cancelled."""

    code = "batch_not_cancellable"


class WrongRunner(Conflict):
    """A job that runs on another runner than this gateway's: only that runner can stop it."""

    code = None


class StoreUnavailable(SkillserveError):
    """The object store cannot be reached; the caller may retry later."""

    code = "store_unavailable"


class ChecksumMismatch(SkillserveError):
    """A downloaded file does not match the sha256 its manifest records."""

    code = "checksum_mismatch"


class InvalidAdapter(SkillserveError, ValueError):
    """An adapter that must not reach the engine: wrong base, rank too large, unsafe files, bad manifest."""

    code = "invalid_adapter"


class TemplateError(SkillserveError, ValueError):
    """An unknown template or one that cannot render a conversation."""

    code = "invalid_template"


class ModelError(SkillserveError):
    """The base model cannot be found, fetched or built."""

    code = "model_error"


class DatasetError(SkillserveError, ValueError):
    """A dataset with bad lines; `errors` lists each one with its 1-based line number."""

    code = "invalid_dataset"

    def __init__(self, errors: list[tuple[int, str]], *, param: str = "dataset", about: str = ""):
        self.errors = errors
        shown = "; ".join(f"line {line}: {reason}" if line else reason for line, reason in errors[:20])
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        self.summary = f"dataset has {len(errors)} bad line(s): {shown}{more}"
        super().__init__(f"{about}{self.summary}", param=param)

    def about(self, param: str, what: str) -> DatasetError:
        """The same bad lines said of where the dataset came from: `param` the request field that named it,
        `what` the words before the summary (`validation `, `file 'rows.jsonl': `)."""
        return DatasetError(self.errors, param=param, about=what)


class GraderError(SkillserveError, ValueError):
    """A grader that cannot run here: a bad field, a bad template or formula, or a kind not offered.

    `param` is the path of the offending field as OpenAI's error body names it (`grader.operation`,
    `grader.graders.accuracy.input[0].content`), so the edge can answer a 400 that points at it.
    """

    code = "invalid_grader"

    def __init__(self, message: str, param: str = "grader"):
        super().__init__(f"{param}: {message}")
        self.param = param
        self.reason = message


class JobRefused(SkillserveError):
    """The cluster refused to start a training job (e.g. the API server's validation); the runner has failed the
    job's record with `reason`."""

    code = "job_refused"

    def __init__(self, reason: str, job_id: str, *, message: str | None = None):
        self.reason = reason
        self.job_id = job_id
        super().__init__(message or f"{reason}; job {job_id} is recorded as failed with this reason")

    def said_as(self, message: str) -> JobRefused:
        """The same refusal in another API's words (the job named as that API names it)."""
        return type(self)(self.reason, self.job_id, message=message)


class JobForbidden(JobRefused):
    """The gateway's cluster account may not start training jobs (RBAC); the record is failed as for JobRefused."""

    code = "job_forbidden"


class InvalidRequest(SkillserveError):
    """A request that cannot run as sent: too many items, a prompt longer than the context, a sampling field the
    engine refuses. `param` names the field; `code` is OpenAI's error code where one applies."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message, param=param)
        self.code = code


class Overloaded(SkillserveError):
    """No capacity now; retry after `retry_after` seconds. `unavailable`: the service cannot take any work yet
    (an engine still starting), rather than this request arriving while the queue is full."""

    code = "overloaded"

    def __init__(self, message: str, retry_after: int = 1, unavailable: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.unavailable = unavailable


class RateLimited(Overloaded):
    """Over a project's or a key's limit (service/inference/ratelimit.py, training and storage quotas). `headers`:
    OpenAI's x-ratelimit-* headers for the limit that refused; `kind`: OpenAI's error type for it ("requests",
    "tokens", or "quota" for limits that waiting does not lift soon); `never_admitted`: the request alone is more than
    the limit, so no wait lifts it (background work fails it rather than waiting)."""

    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, retry_after: int = 1, *, kind: str = "requests", code: str | None = None,
        headers: dict[str, str] | None = None, never_admitted: bool = False,
    ):
        super().__init__(message, retry_after)
        self.kind = kind
        self.headers = headers or {}
        self.never_admitted = never_admitted
        if code is not None:
            self.code = code


class RequestTimeout(SkillserveError):
    """What a request asked for took longer than this service allows it (compiling its grammar): 408."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message, param=param)
        self.code = code


class ClientGone(SkillserveError):
    """The client went away before its answer was ready; its engine requests were aborted."""

    code = "client_closed_request"


class TrainingDisabled(SkillserveError):
    """This gateway runs no trainer (runner none): every way of starting or cancelling training answers so."""

    code = "training_disabled"

    def __init__(self) -> None:
        super().__init__("training is disabled on this gateway")


class EngineFailed(SkillserveError):
    """The engine ended a request without an answer: a fault of this service, not of the request."""

    code = None
