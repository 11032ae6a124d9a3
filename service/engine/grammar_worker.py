"""Grammar validation and compilation in worker processes with a memory cap and a wall-time limit.

vLLM validates a request's structured-output constraint in the process that calls `AsyncLLM.generate`
(the gateway) and compiles it again in its engine core, on one thread, with no timeout and no cancel.
A schema can cost either step almost anything (guidance allocated 16.8 GB for `minItems: 1e9`; xgrammar
spends about a second per distinct bounded string), so the gateway never runs a grammar backend itself:

- `service/engine/grammar_limits.py` refuses absurd bounds first, on the event loop, for free;
- a worker here runs vLLM's own xgrammar validation *and* the same compile the engine core will run, with
  the same tokenizer, under RLIMIT_AS (its baseline plus `grammar_worker_memory_mb`) and a wall-time limit
  (`grammar_compile_timeout_s`). A worker that runs out of memory dies, one that runs over is killed, and
  either way that one request gets a 400/408 with the reason and a fresh worker replaces it. A client that
  goes away mid-compile has its worker killed too: the only cancel a native compile allows.
- the engine core then compiles only what a worker compiled within the limit (xgrammar's cache there
  makes a repeated grammar free), so its single compile thread is held at most about that long per
  distinct grammar, never for the minutes an unbounded one took.

Outcomes are remembered by the constraint's hash (bounded), and concurrent requests for one constraint
share one compile, so eight copies of a costly schema cost one compile, not eight.

The workers are forked from a server process that imported their code once (multiprocessing's forkserver, never
the gateway itself): a worker's imports (xgrammar, transformers, vLLM's grammar code) take about 5 s of a core, so
each worker spawned on its own paid them again, at start-up while the engine's processes import beside them on a
small CPU, and after every worker a runaway constraint had killed. A fork of the server loads only the tokenizer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import resource
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger("skillserve.grammar")

READY_TIMEOUT_S = 300.0  # a worker loads the tokenizer and vLLM's grammar code once (seconds on a busy CPU)
REMEMBERED = 256  # constraints whose outcome is kept (each at most max_grammar_bytes)
# What the fork server imports once for every worker: `_worker_main`'s imports, and this module.
PRELOAD = [
    "xgrammar",
    "transformers",
    "vllm.sampling_params",
    "vllm.v1.structured_output.backend_xgrammar",
    "vllm.v1.structured_output.request",
    __name__,
]


def _context() -> Any:
    """multiprocessing's forkserver, with the workers' imports preloaded. The server is started from a clean
    interpreter (not forked from the gateway, whose threads and engine client must not be copied) on first use
    and ends when the gateway does; an import it cannot preload is left to each worker."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


class GrammarRefused(Exception):
    """The backend refused or could not compile the constraint in time: `status` 400 or 408 and the reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class _Outcome:
    fields: dict[str, Any] | None  # the constraint as the engine core must get it (choices become a grammar)
    status: int = 200
    reason: str = ""


def _worker_main(conn: Connection, model_dir: str, memory_bytes: int) -> None:
    """A worker's loop: load once, cap the address space, then answer one constraint at a time."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from types import SimpleNamespace

    import xgrammar
    from transformers import AutoTokenizer
    from vllm.sampling_params import StructuredOutputsParams
    from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend, validate_xgrammar_grammar
    from vllm.v1.structured_output.request import get_structured_output_key

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # What XgrammarBackend reads of the engine's config: the same defaults the engine runs with.
    config = SimpleNamespace(
        structured_outputs_config=SimpleNamespace(disable_any_whitespace=False),
        model_config=None,
        speculative_config=None,
    )
    # The engine core sizes the vocabulary from the model's config (padded embeddings), not the tokenizer.
    vocab_size = json.loads((Path(model_dir) / "config.json").read_text()).get("vocab_size") or len(tokenizer)
    backend = XgrammarBackend(config, tokenizer=tokenizer, vocab_size=vocab_size)  # type: ignore[arg-type]
    # One thread and no cache: the gateway remembers outcomes itself, and a worker's memory stays its own.
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    backend.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)
    # Baseline plus the cap: torch and the tokenizer map gigabytes of address space they never touch, so an
    # absolute RLIMIT_AS would either refuse the imports or allow far too much.
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (_address_space() + memory_bytes, resource.RLIM_INFINITY))
    conn.send(("ready", os.getpid()))
    while True:
        try:
            fields = conn.recv()
        except EOFError:
            return
        try:
            params = StructuredOutputsParams(**fields)
            validate_xgrammar_grammar(SimpleNamespace(structured_outputs=params))  # type: ignore[arg-type]
            kind, spec = get_structured_output_key(params)
            backend.compile_grammar(kind, spec)
            verified = {k: v for k, v in vars(params).items() if not k.startswith("_") and v is not None}
            conn.send(("ok", verified))
        except Exception as exc:
            conn.send(("error", 400, _reason(exc)))


def _reason(exc: BaseException) -> str:
    """What to tell the client: vLLM's message, the backend's cause under it, and whether memory ran out
    (xgrammar turns the cap's std::bad_alloc into an exception; the worker itself lives on)."""
    chain = [exc, *([exc.__cause__] if exc.__cause__ is not None else [])]
    if any(isinstance(e, MemoryError) or "bad_alloc" in str(e) for e in chain):
        return "the constraint needs more memory than a grammar worker may use (grammar_worker_memory_mb)"
    return ": ".join(dict.fromkeys(str(e).strip() or type(e).__name__ for e in chain))


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


class _Worker:
    def __init__(self, model_dir: Path, memory_bytes: int):
        ctx = _context()
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker_main, args=(child, str(model_dir), memory_bytes), name="skillserve-grammar", daemon=True
        )
        self.process.start()
        child.close()
        self.pid = 0  # known once ready

    def wait_ready(self) -> _Worker:
        """Blocking until the worker has loaded (seconds); a worker that does not load is killed."""
        if not self.conn.poll(READY_TIMEOUT_S):
            self.kill()
            raise RuntimeError("the grammar worker did not start")
        _, self.pid = self.conn.recv()
        return self

    @classmethod
    def ready(cls, model_dir: Path, memory_bytes: int) -> _Worker:
        return cls(model_dir, memory_bytes).wait_ready()

    def run(self, fields: dict[str, Any], timeout: float) -> _Outcome:
        """Blocking: one constraint through the worker. A dead or overrunning worker is killed; the caller
        must not use it again."""
        try:
            self.conn.send(fields)
            if not self.conn.poll(timeout):
                self.kill()
                reason = f"compiling the constraint took over {timeout:g} s (grammar_compile_timeout_s)"
                return _Outcome(None, 408, reason)
            answer = self.conn.recv()
        except (EOFError, OSError):
            self.kill()
            return _Outcome(
                None, 400, "the grammar worker died compiling the constraint (over grammar_worker_memory_mb?)"
            )
        if answer[0] == "ok":
            return _Outcome(answer[1])
        return _Outcome(None, answer[1], answer[2])

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.process.kill()
            self.process.join(5)
        with contextlib.suppress(Exception):
            self.conn.close()


class GrammarWorkers:
    """A few grammar workers, the outcomes they gave, and the compiles in progress."""

    def __init__(self, model_dir: Path, workers: int, timeout_s: float, memory_bytes: int, metrics: Any = None):
        self.model_dir, self.size, self.timeout_s, self.memory_bytes = model_dir, workers, timeout_s, memory_bytes
        self.metrics = metrics
        self._idle: list[_Worker] = []
        self._loading: list[_Worker] = []  # launched, not yet waited for
        self._lock = threading.Lock()  # over `_loading`, which the launching thread fills
        self._launcher: threading.Thread | None = None
        self._slots = asyncio.Semaphore(workers)
        self._outcomes: OrderedDict[str, _Outcome] = OrderedDict()
        self._pending: dict[str, tuple[asyncio.Task[_Outcome], list[int]]] = {}
        self.in_flight = 0

    def launch(self) -> None:
        """Start the missing workers without waiting for them. A thread starts them, since the first start waits
        for the fork server's imports (seconds); they load on the cores the engine leaves idle while its
        processes start one after the other."""
        with self._lock:
            if self._launcher is None or not self._launcher.is_alive():
                self._launcher = threading.Thread(target=self._fill, name="skillserve-grammar-launch", daemon=True)
                self._launcher.start()

    def _fill(self) -> None:
        try:
            while len(self._idle) + len(self._loading) < self.size:
                worker = _Worker(self.model_dir, self.memory_bytes)
                with self._lock:
                    self._loading.append(worker)
        except Exception:  # serving goes on; a constrained request tries again and is told if it cannot
            log.exception("a grammar worker did not start")

    def _launched(self) -> list[_Worker]:
        """The launched workers not yet waited for, once the launching thread is done."""
        if self._launcher is not None:
            self._launcher.join(READY_TIMEOUT_S)
        with self._lock:
            loading, self._loading = self._loading, []
        return loading

    def start(self) -> None:
        """Launch any missing workers and wait until they are loaded, so the first constrained request does not
        wait."""
        self.launch()
        for worker in self._launched():
            try:
                self._idle.append(worker.wait_ready())
            except Exception:
                log.exception("a grammar worker did not start")

    def shutdown(self) -> None:
        for worker in self._idle + self._launched():
            worker.kill()
        self._idle.clear()

    def pids(self) -> list[int]:
        return [w.pid for w in self._idle]

    async def verify(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The constraint as the engine core must receive it, once a worker compiled it within the limits;
        GrammarRefused (400/408) otherwise."""
        key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
        outcome = self._outcomes.get(key)
        if outcome is None:
            outcome = await self._shared(key, fields)
        else:
            self._outcomes.move_to_end(key)
        if outcome.fields is None:
            raise GrammarRefused(outcome.status, outcome.reason)
        return dict(outcome.fields)

    async def _shared(self, key: str, fields: dict[str, Any]) -> _Outcome:
        """One compile per constraint however many requests wait on it; cancelled when all of them left."""
        if key not in self._pending:
            self._pending[key] = (asyncio.ensure_future(self._compile(key, fields)), [0])
        task, waiters = self._pending[key]
        waiters[0] += 1
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            waiters[0] -= 1
            if waiters[0] == 0:
                task.cancel()  # nobody wants it any more: kill the compile
            raise

    async def _replace(self) -> None:
        """A fresh worker for one that was killed, started now rather than by the next request."""
        with contextlib.suppress(Exception):
            worker = await asyncio.to_thread(_Worker.ready, self.model_dir, self.memory_bytes)
            self._idle.append(worker)

    async def _compile(self, key: str, fields: dict[str, Any]) -> _Outcome:
        self.in_flight += 1
        started = time.perf_counter()
        outcome = _Outcome(None, 500, "the compile was cancelled")
        worker: _Worker | None = None
        try:
            async with self._slots:
                worker = self._idle.pop() if self._idle else None
                if worker is None or not worker.alive:
                    try:
                        worker = await asyncio.to_thread(_Worker.ready, self.model_dir, self.memory_bytes)
                    except Exception:
                        log.exception("a grammar worker did not start")
                        return _Outcome(None, 503, "no grammar worker could be started; retry later")
                outcome = await asyncio.to_thread(worker.run, fields, self.timeout_s)
                if worker.alive:
                    self._idle.append(worker)
                else:
                    asyncio.ensure_future(self._replace())
                worker = None
        except asyncio.CancelledError:
            if worker is not None:
                worker.kill()  # the abandoned compile stops with its process
                asyncio.ensure_future(self._replace())
            raise
        finally:
            self.in_flight -= 1
            self._pending.pop(key, None)
            if self.metrics is not None:
                kind = {200: "ok", 400: "refused", 408: "timeout"}.get(outcome.status, "cancelled")
                self.metrics.grammar_compile.labels(kind).observe(time.perf_counter() - started)
        if outcome.status in (200, 400, 408):
            self._outcomes[key] = outcome
            while len(self._outcomes) > REMEMBERED:
                self._outcomes.popitem(last=False)
        return outcome
