"""`python -m trainer run <job-uri>` (what runners launch) and `python -m trainer train ...` (local use)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from adapters.dataset import parse_dataset
from adapters.errors import SkillserveError
from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.schema import Hyperparameters, Method, check_name, is_auto, new_version
from adapters.templates import TEMPLATE_NAMES
from trainer.job import load_template, run_job, trained_manifest
from trainer.loop import train
from trainer.methods import METHODS, method_for


def _plain(field: Any) -> Any:
    """A field's type without the None an `Auto` or optional field allows."""
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        kinds = [kind for kind in get_args(annotation) if kind is not type(None)]
        return kinds[0] if len(kinds) == 1 else annotation
    return annotation


def _train(args: argparse.Namespace) -> int:
    hp = Hyperparameters(**{k: v for k, v in vars(args).items() if k in Hyperparameters.model_fields and v is not None})
    name = check_name(args.name or args.out.name)
    base_dir = resolve_model(args.base)
    template = load_template(args.template, base_dir)
    data = args.data.read_bytes()
    spec = Method(type=args.method, beta=args.beta)
    dataset = parse_dataset(data, method=spec.type)
    print(f"{len(dataset.rows)} rows ({dataset.format}); training on {base_dir.name} with template {template.name}",
          file=sys.stderr)
    method = method_for(spec)
    result = train(method, base_dir, template, method.examples(dataset), hp, args.out)
    manifest = trained_manifest(
        result, template, name=name, version=args.version or new_version(),
        base_model_id=Path(args.base).name if args.base != DEFAULT_MODEL else DEFAULT_MODEL, base_dir=base_dir,
        dataset_sha256=dataset.sha256, dataset_rows=len(dataset.rows),
    )
    if args.publish:
        from adapters.registry import Registry
        from adapters.store import open_store
        from trainer.evaluate import check_min_score

        check_min_score(result.metrics, hp.min_score)  # as for jobs: a skill below the bar is not published
        manifest = Registry(open_store(args.publish)).publish(manifest, args.out)
        print(f"published {manifest.ref} to {args.publish}", file=sys.stderr)
    else:
        (args.out / "manifest.json").write_text(manifest.model_dump_json(indent=2))
    print(json.dumps(result.metrics, indent=2))
    return 0


def command_line() -> argparse.ArgumentParser:
    """The two commands; `train` takes every hyperparameter as a flag of its own type (a boolean as --x/--no-x, a
    choice as its choices), and one left out is the default or, for an `Auto` field, chosen from the data."""
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a stored training job: <store-uri>/jobs/<id>.json")
    run.add_argument("job_uri")
    train = sub.add_parser("train", help="train an adapter from a local JSONL file")
    train.add_argument("data", type=Path, help="dataset, JSONL (alpaca, chat or prompt/completion rows)")
    train.add_argument("--out", type=Path, required=True, help="directory for the adapter files")
    train.add_argument("--base", default=DEFAULT_MODEL, help="base model: the embedded default, a directory or hub id")
    train.add_argument("--template", default="chatml", choices=TEMPLATE_NAMES, help="chat template")
    train.add_argument("--name", help="adapter name (default: the --out directory's name)")
    train.add_argument("--version", help="adapter version (default: a timestamp)")
    train.add_argument("--publish", metavar="STORE_URI", help="publish to this store instead of writing a manifest")
    train.add_argument("--method", default="supervised", choices=tuple(METHODS),
                       help="supervised (SFT rows) or dpo (OpenAI preference rows)")
    train.add_argument("--beta", type=float, default=Method.model_fields["beta"].default,
                       help=Method.model_fields["beta"].description)
    for name, field in Hyperparameters.model_fields.items():
        if name == "target_modules":
            train.add_argument("--target-modules", nargs="+", help=field.description)
            continue
        default = "auto: chosen from the data" if is_auto(field) else field.default
        flag, help_text, kind = f"--{name.replace('_', '-')}", f"{field.description} (default {default})", _plain(field)
        if kind is bool:
            train.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif get_origin(kind) is Literal:
            train.add_argument(flag, choices=get_args(kind), help=help_text)
        else:
            train.add_argument(flag, type=kind if kind in (int, float) else float, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = command_line().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return run_job(args.job_uri) if args.command == "run" else _train(args)
    except SkillserveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
