"""Request bodies off the event loop: a JSON body decoded and validated, a multipart body parsed and spooled, on
worker threads; the loop only receives the bytes.

FastAPI decodes and validates a route's JSON body on the event loop, and Starlette parses multipart there: eight
20,000-property chat schemas at once held `/health` for 341 ms, eight 40 MB uploads for 716 ms. `OffLoopRoute`
keeps FastAPI's route as it is (the OpenAPI document, the dependencies, the error bodies: the same validation
call with the same `loc`) and hands it a request whose body is already decoded and validated, or whose form is
already parsed. A thread that holds the interpreter in C still stalls the loop for that long, which is why the
inference bodies stay small (`max_inference_request_bytes`): a 0.7 MB body decodes in about 8 ms.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import email.message
import json
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from tempfile import SpooledTemporaryFile
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import params
from fastapi.dependencies.utils import get_flat_dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import AwaitableOrContextManager, AwaitableOrContextManagerWrapper, Request
from starlette.responses import Response

from service.api.deps import get_settings
from service.errors import APIError

if TYPE_CHECKING:
    from fastapi._compat import ModelField

T = TypeVar("T")

SPOOL_BYTES = 2**20  # a file part stays in memory up to this, then goes to a temporary file (as Starlette's do)
BATCH_BYTES = 2**20  # bytes received before they go to the parser's thread: fewer hops than one per chunk
# Threads of their own, two: store reads on the default executor never wait behind uploads, and eight uploads at once
# are not eight threads contending with the event loop for the interpreter.
BODY_THREADS = ThreadPoolExecutor(2, thread_name_prefix="request-body")


async def on_body_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on a request-body thread."""
    return await asyncio.get_running_loop().run_in_executor(BODY_THREADS, fn, *args)


class OffLoopRoute(APIRoute):
    """A FastAPI route whose JSON body (a single model) is decoded and validated, and whose multipart form is
    parsed, on worker threads before FastAPI's own handler runs; FastAPI then finds both done."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        field = self.body_field
        form = field is not None and isinstance(field.field_info, params.Form)
        # Validated here only when FastAPI validates the whole body against this one required field (not embedded).
        flat = get_flat_dependant(self.dependant, skip_repeats=True)
        single = len(flat.body_params) == 1 and flat.body_params[0] is field
        model = field if field is not None and not form and single and field.field_info.is_required() else None

        async def off_loop(request: Request) -> Response:
            request = OffLoopRequest(request.scope, request.receive)
            invalid: list[Any] = []
            if form and is_multipart(request.headers.get("content-type")):
                await request.form()  # FastAPI's handler asks for it with these same (default) limits
            elif field is not None and not form and is_json(request.headers.get("content-type")):
                body = await request.body()
                if body:
                    request.decoded, invalid = await on_body_thread(decode_and_validate, body, model)
            try:
                return await handler(request)
            except RequestValidationError as exc:
                if not invalid:
                    raise
                # FastAPI found the body missing only once the route's dependencies (the key check) had passed, as it
                # reports a body's errors: the errors it reports are the worker thread's.
                others = [error for error in exc.errors() if tuple(error.get("loc", ()))[:1] != ("body",)]
                raise RequestValidationError([*others, *invalid], body=exc.body) from None

        return off_loop


def is_multipart(content_type: str | None) -> bool:
    return parse_options_header(content_type or "")[0] == b"multipart/form-data"


def is_json(content_type: str | None) -> bool:
    """Whether FastAPI reads a body of this content type as JSON (its own test, fastapi/routing.py)."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def decode_and_validate(body: bytes, field: ModelField | None) -> tuple[Any, list[Any]]:
    """(value, validation errors) of a JSON body, validated against `field` as FastAPI validates it. A body that does
    not decode raises what FastAPI raises for it; one that fails validation comes back as None (FastAPI then finds
    it missing, after the route's dependencies) with its errors."""
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        error = {"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}}
        raise RequestValidationError([{**error, "ctx": {"error": exc.msg}}], body=exc.doc) from exc
    except Exception as exc:  # not UTF-8, nested too deeply: FastAPI's answer to a body it cannot read
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from exc
    if field is None or value is None:  # `null` is FastAPI's own missing body
        return value, []
    validated, errors = field.validate(value, {}, loc=("body",))
    return (None, errors) if errors else (validated, [])


class OffLoopRequest(Request):
    """A request whose `json()` is the body decoded (and validated) on a worker thread, and whose multipart
    `form()` is parsed and spooled on worker threads, each file part held to `max_dataset_bytes` as it arrives."""

    decoded: Any

    async def json(self) -> Any:
        if not hasattr(self, "decoded"):
            self.decoded, _ = await on_body_thread(decode_and_validate, await self.body(), None)
        return self.decoded

    def form(
        self,
        *,
        max_files: int | float = 1000,
        max_fields: int | float = 1000,
        max_part_size: int = 2**20,
    ) -> AwaitableOrContextManager[FormData]:
        if not is_multipart(self.headers.get("content-type")):
            return super().form(max_files=max_files, max_fields=max_fields, max_part_size=max_part_size)
        return AwaitableOrContextManagerWrapper(self._multipart(max_files, max_fields, max_part_size))

    async def _multipart(self, max_files: int | float, max_fields: int | float, max_part_size: int) -> FormData:
        if self._form is not None:
            return self._form
        file_limit = get_settings(self).max_dataset_bytes
        parser = SpooledMultipart(self.headers, max_files, max_fields, max_part_size, file_limit)
        try:
            batch: list[bytes] = []
            size = 0
            async with contextlib.aclosing(self.stream()) as stream:
                async for chunk in stream:
                    batch.append(chunk)
                    size += len(chunk)
                    if size >= BATCH_BYTES:
                        await on_body_thread(parser.feed, batch)
                        batch, size = [], 0
            await on_body_thread(parser.feed, batch)
            self._form = await on_body_thread(parser.finish)
        except BaseException:
            parser.close()
            raise
        return self._form


@dataclass
class _Part:
    """The part being parsed: its headers, then a field's bytes or a file's spool."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    disposition: bytes = b""
    name: str = ""
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)
    file: SpooledTemporaryFile[bytes] | None = None
    size: int = 0


class SpooledMultipart:
    """A multipart/form-data body parsed as it arrives (python-multipart, as Starlette parses it, with Starlette's
    limits and messages), called from worker threads: fields as text, files spooled to temporary files, a file
    part over `file_limit` refused (413) at the byte that crosses it."""

    def __init__(
        self, headers: Headers, max_files: int | float, max_fields: int | float, max_part_size: int, file_limit: int
    ):
        _, options = parse_options_header(headers.get("content-type", ""))
        charset = options.get(b"charset", b"utf-8").decode("latin-1")
        try:
            self.charset = codecs.lookup(charset).name
        except LookupError:
            self.charset = "latin-1"
        if b"boundary" not in options:
            raise HTTPException(400, "Missing boundary in multipart.")
        self.limits = (max_files, max_fields, max_part_size, file_limit)
        self.items: list[tuple[str, str | UploadFile]] = []
        self.files: list[SpooledTemporaryFile[bytes]] = []
        self.counts = [0, 0]  # files, fields
        self._part = _Part()
        self._header = [b"", b""]
        self.parser = MultipartParser(
            options[b"boundary"],
            {
                "on_part_begin": self._begin,
                "on_header_field": lambda data, start, end: self._append_header(0, data[start:end]),
                "on_header_value": lambda data, start, end: self._append_header(1, data[start:end]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._end,
            },
        )

    def feed(self, chunks: list[bytes]) -> None:
        try:
            for chunk in chunks:
                self.parser.write(chunk)
        except FormParserError:
            raise HTTPException(400, "Invalid multipart data.") from None

    def finish(self) -> FormData:
        try:
            self.parser.finalize()
        except FormParserError:
            raise HTTPException(400, "Invalid multipart data.") from None
        return FormData(self.items)

    def close(self) -> None:
        for file in self.files:
            file.close()

    def _decode(self, data: bytes) -> str:
        try:
            return data.decode(self.charset)
        except (UnicodeDecodeError, LookupError):
            return data.decode("latin-1")

    def _begin(self) -> None:
        self._part = _Part()

    def _append_header(self, which: int, data: bytes) -> None:
        self._header[which] += data

    def _header_end(self) -> None:
        name, value = self._header[0].lower(), self._header[1]
        if name == b"content-disposition":
            self._part.disposition = value
        self._part.headers.append((name, value))
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        max_files, max_fields, _, _ = self.limits
        part = self._part
        _, options = parse_options_header(part.disposition)
        if b"name" not in options:
            raise HTTPException(400, 'The Content-Disposition header field "name" must be provided.')
        part.name = self._decode(options[b"name"])
        if b"filename" in options:
            self.counts[0] += 1
            if self.counts[0] > max_files:
                raise HTTPException(400, f"Too many files. Maximum number of files is {max_files}.")
            part.filename = self._decode(options[b"filename"])
            part.file = SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (closed with the form, or on error)
            self.files.append(part.file)
        else:
            self.counts[1] += 1
            if self.counts[1] > max_fields:
                raise HTTPException(400, f"Too many fields. Maximum number of fields is {max_fields}.")

    def _data(self, data: bytes, start: int, end: int) -> None:
        _, _, max_part_size, file_limit = self.limits
        part, size = self._part, end - start
        if part.file is None:
            if len(part.data) + size > max_part_size:
                raise HTTPException(400, f"Part exceeded maximum size of {int(max_part_size / 1024)}KB.")
            part.data += data[start:end]
            return
        part.size += size
        if part.size > file_limit:
            raise APIError(
                413,
                f"file too big: the limit is {file_limit} bytes (max_dataset_bytes)",
                param=part.name,
                code="file_too_large",
            )
        part.file.write(data[start:end])

    def _end(self) -> None:
        part = self._part
        if part.file is None:
            self.items.append((part.name, self._decode(bytes(part.data))))
            return
        part.file.seek(0)
        upload = UploadFile(part.file, size=part.size, filename=part.filename, headers=Headers(raw=part.headers))  # type: ignore[arg-type]
        self.items.append((part.name, upload))

