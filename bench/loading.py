"""Adapter loading through the gateway: manifest published -> first token, per tier, rank and store.

Cold: a name the gateway has never seen (store -> disk cache -> engine). Hot: the same request again
(in vLLM's LoRA slots). Warm: after enough other adapters pushed it out of the engine's LoRA cache
(on local disk, not in the engine). The floor is a base-model request of the same shape. Then many
adapters: more distinct adapters than the engine holds, requested round-robin by vLLM's client.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from adapters.registry import Registry
from adapters.store import open_store
from bench.lora_files import make_adapters, publish
from bench.servers import API_KEY, BASE_MODEL_ID, EngineShape, start_gateway
from bench.serving import ServingSize, vllm_bench

ENGINE_SLOTS = 4  # max_loras = max_cpu_loras: the hot tier holds this many adapters
FILLER_RANK = 8


@dataclass(frozen=True)
class LoadingSize:
    ranks: tuple[int, ...]
    repeats: int
    stores: tuple[str, ...]
    many_adapters: int
    many_requests: int
    many_concurrency: int
    many_output_len: int


SIZES = {
    "tiny": LoadingSize(
        ranks=(8,), repeats=1, stores=("file", "s3"),
        many_adapters=6, many_requests=12, many_concurrency=2, many_output_len=4,
    ),
    "full": LoadingSize(
        ranks=(8, 16, 64), repeats=3, stores=("file", "s3"),
        many_adapters=64, many_requests=128, many_concurrency=4, many_output_len=8,
    ),
}  # fmt: skip


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server over real HTTP on loopback, a bucket on it; yields the store URI.

    Credentials are dummies and the shared AWS config is pointed away, so a real ~/.aws is never used.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent/skillserve-bench-aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/skillserve-bench-aws-credentials",
    }
    saved = {k: os.environ.get(k) for k in [*env, "AWS_PROFILE", "AWS_SESSION_TOKEN"]}
    os.environ.update(env)
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_SESSION_TOKEN", None)
    try:
        bucket = f"skillserve-bench-{uuid.uuid4().hex[:12]}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}/bench"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def first_token_s(client: httpx.Client, model: str) -> float:
    """Seconds until the first generated token: a one-token completion, so its whole answer is that token."""
    started = time.perf_counter()
    r = client.post("/v1/completions", json={"model": model, "prompt": "Hello there", "max_tokens": 1})
    r.raise_for_status()
    return time.perf_counter() - started


def counters(client: httpx.Client) -> dict[str, float]:
    """The gateway's adapter-tier counters from /metrics."""
    wanted = {
        "skillserve_adapter_loads_total": "store_fetches",
        "skillserve_adapter_evictions_total": "disk_evictions",
        "skillserve_adapter_cache_hits_total": "disk_hits",
    }
    found = dict.fromkeys(wanted.values(), 0.0)
    for line in client.get("/metrics").text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            found[wanted[name]] = float(value)
    return found


def tiers(client: httpx.Client, registry: Registry, dirs: dict[int, Path], fillers: list[str],
          size: LoadingSize, store: str) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for rank, directory in dirs.items():
        cold, warm, hot = [], [], []
        for i in range(size.repeats):
            name = f"load-{store}-r{rank}-{i}-{uuid.uuid4().hex[:6]}"
            publish(registry, directory, name, rank)  # returns once the manifest, written last, is there
            cold.append(first_token_s(client, name))
            hot.append(first_token_s(client, name))
            for filler in fillers:  # push `name` out of the engine's LoRA cache; its files stay on disk
                first_token_s(client, filler)
            warm.append(first_token_s(client, name))
        floor = [first_token_s(client, BASE_MODEL_ID) for _ in range(size.repeats)]
        rows.append(
            {
                "store": store,
                "rank": rank,
                "cold_s": round(statistics.median(cold), 3),
                "warm_s": round(statistics.median(warm), 3),
                "hot_s": round(statistics.median(hot), 3),
                "base_floor_s": round(statistics.median(floor), 3),
                "samples": {"cold": _r(cold), "warm": _r(warm), "hot": _r(hot), "base": _r(floor)},
            }
        )
    return rows


def _r(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


def many_adapters(url: str, client: httpx.Client, registry: Registry, workdir: Path,
                  size: LoadingSize) -> dict[str, Any]:  # fmt: skip
    """More adapters than engine slots, round-robin through vLLM's client; vs the same load on one adapter."""
    dirs = make_adapters(workdir / "loras", FILLER_RANK, size.many_adapters, seed=7)
    names = [f"many-{i}" for i in range(size.many_adapters)]
    for name, d in zip(names, dirs, strict=True):
        publish(registry, d, name, FILLER_RANK)
    load = ServingSize(
        concurrencies=(size.many_concurrency,),
        requests_per_case=size.many_requests,
        input_len=64,
        output_len=size.many_output_len,
        adapters=size.many_adapters,
    )
    log = workdir / "vllm-bench-many.log"
    before = counters(client)
    many = vllm_bench(url, load, size.many_concurrency, names, log)
    after = counters(client)
    one = vllm_bench(url, load, size.many_concurrency, names[:1], log)  # warm: names[0] is loaded by now
    figures = ("output_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms")
    result: dict[str, Any] = {
        "adapters": size.many_adapters,
        "engine_slots": ENGINE_SLOTS,
        "requests": load.requests(size.many_concurrency),
        "concurrency": size.many_concurrency,
        "input_len": load.input_len,
        "output_len": load.output_len,
        "many": {k: round(float(many[k]), 3) for k in figures if many.get(k) is not None},
        "one": {k: round(float(one[k]), 3) for k in figures if one.get(k) is not None},
        "counts": {k: int(after[k] - before[k]) for k in after},
        "failed": int(many.get("failed") or 0) + int(one.get("failed") or 0),
    }
    # Round-robin over more adapters than slots defeats any LRU: every request after the first pass
    # still swaps an adapter into the engine. vLLM does not report its swaps; this is the count implied.
    result["counts"]["engine_loads_implied"] = result["requests"]
    result["ratio_many_over_one"] = {
        "output_tok_s": round(result["many"]["output_throughput"] / result["one"]["output_throughput"], 3)
    }
    return result


def run(size_name: str, workdir: Path) -> dict[str, Any]:
    size = SIZES[size_name]
    shape = EngineShape(
        max_num_seqs=8, max_loras=ENGINE_SLOTS, max_cpu_loras=ENGINE_SLOTS, max_lora_rank=max(size.ranks)
    )
    workdir.mkdir(parents=True, exist_ok=True)
    dirs = {rank: make_adapters(workdir / "loras", rank, 1)[0] for rank in size.ranks}
    filler_dirs = make_adapters(workdir / "loras", FILLER_RANK, ENGINE_SLOTS + 1, seed=3)[1:]
    rows: list[dict[str, Any]] = []
    many: dict[str, Any] | None = None
    startup: dict[str, float] = {}
    for store in size.stores:
        with contextlib.ExitStack() as stack:
            uri = stack.enter_context(moto_s3()) if store == "s3" else f"file://{workdir / 'store'}"
            registry = Registry(open_store(uri))
            fillers = [f"filler-{store}-{i}" for i in range(ENGINE_SLOTS)]
            for name, d in zip(fillers, filler_dirs, strict=True):
                publish(registry, d, name, FILLER_RANK)
            gateway = stack.enter_context(start_gateway(shape, uri, workdir / f"gateway-{store}"))
            startup[f"gateway_{store}_s"] = gateway.started_s
            headers = {"Authorization": f"Bearer {API_KEY}"}
            client = stack.enter_context(httpx.Client(base_url=gateway.url, headers=headers, timeout=300))
            for filler in fillers:
                first_token_s(client, filler)
            first_token_s(client, BASE_MODEL_ID)
            rows += tiers(client, registry, dirs, fillers, size, store)
            if store == "file":
                many = many_adapters(gateway.url, client, registry, workdir, size)
    rank16 = next((r for r in rows if r["rank"] == 16 and r["store"] == "file"), None)
    return {
        "benchmark": "loading",
        "size": size_name,
        "settings": {
            **asdict(size),
            "engine": asdict(shape),
            "lora_targets": "q,k,v,o",
            "request": "POST /v1/completions, max_tokens=1, non-streamed (its answer is the first token)",
            "warm": f"after {ENGINE_SLOTS} other adapters evicted it from vLLM's LoRA cache "
            f"(max_loras = max_cpu_loras = {ENGINE_SLOTS})",
            "s3": "moto's S3 server over HTTP on loopback",
        },
        "startup": startup,
        "tiers": rows,
        "many_adapters": many,
        "targets": {
            "cold_rank16_file_s": {
                "value": rank16["cold_s"] if rank16 else None,
                "target": "< 2",
                "met": None if rank16 is None else rank16["cold_s"] < 2,  # None: rank 16 not in this size
            }
        },
    }
