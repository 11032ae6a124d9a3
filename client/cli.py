"""`skillserve`: a small client of the gateway's HTTP API (train, follow, list, chat, cancel, delete, eval, audit;
projects and keys)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class CLIError(Exception):
    """A failed call, already phrased for the user."""


def connect(args: argparse.Namespace) -> httpx.Client:
    """An HTTP client for the gateway at `--url`, with `--key` as its bearer token."""
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    return httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=httpx.Timeout(30, read=None))


def checked(response: httpx.Response) -> Any:
    """The JSON of a successful response; a CLIError with the gateway's error message otherwise."""
    if response.is_success:
        return response.json()
    try:
        error = response.json()["error"]
        message = error["message"]
        param = error.get("param")
        if param and not message.startswith(param):  # the field at fault, where the message does not name it first
            message = f"{param}: {message}"
        details = error.get("details")
        if isinstance(details, list) and details and "line" in details[0]:
            message += "".join(f"\n  line {d['line']}: {d['reason']}" for d in details)
    except (ValueError, KeyError, TypeError):
        message = response.text
    raise CLIError(f"{response.status_code}: {message}")


def _hyperparameters(pairs: list[str]) -> dict[str, Any]:
    """`--set rank=16 --set learning_rate=2e-3` as a dict; values are parsed as JSON when they can be."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CLIError(f"--set expects key=value, got {pair!r}")
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = value
    return result


FINISHED = ("succeeded", "failed", "cancelled")
# No rate in the bar: a step's length is the server's to judge (its ETA), and a bar that starts late on a running
# or finished job would divide many steps by no time at all.
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} steps [{elapsed}]{postfix}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_text(job: dict[str, Any]) -> str:
    """What a job is doing, in a few words: its phase (or status), losses as they come, the server's ETA."""
    progress = job.get("progress") or {}
    status = job.get("status", "")
    words = [str(progress.get("phase") or status).replace("_", " ") if status == "running" else status]
    for key, label in (("loss", "loss"), ("eval_loss", "eval loss")):
        if isinstance(progress.get(key), int | float):
            words.append(f"{label} {progress[key]:.4f}")
    eta = progress.get("eta_seconds")
    if status == "running" and progress.get("phase") == "training" and isinstance(eta, int | float):
        words.append(f"ETA {_duration(eta)}")
    return ", ".join(words)


def _summary(job: dict[str, Any]) -> str:
    """One line for a job that has finished: steps, time and rate as the trainer measured them."""
    progress, metrics = job.get("progress") or {}, job.get("metrics") or {}
    line = f"{str(job.get('id', ''))[:8]}: {progress_text(job)}"
    if progress.get("total_steps"):
        line += f"; {progress.get('step')}/{progress['total_steps']} steps"
    if isinstance(metrics.get("train_seconds"), int | float):
        line += f" in {_duration(metrics['train_seconds'])}"
        if isinstance(metrics.get("tokens_per_second"), int | float):
            line += f" ({metrics['tokens_per_second']:.0f} tokens/s)"
    return line


def follow(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Show a job live until it finishes (phase, a bar over its steps, losses, the server's ETA); returns its last
    state. A job that has already finished gets one summary line instead of a bar."""
    from tqdm import tqdm

    job: dict[str, Any] = {}
    bar: Any = None
    try:
        with client.stream("GET", f"/jobs/{job_id}/events") as stream:
            if not stream.is_success:
                stream.read()
                checked(stream)
            for line in stream.iter_lines():
                if not line.startswith("data: "):
                    continue
                job = json.loads(line[len("data: ") :])
                if bar is None and job.get("status") in FINISHED:
                    break
                if bar is None:
                    bar = tqdm(total=0, desc=job_id[:8], bar_format=BAR_FORMAT, dynamic_ncols=True)
                progress = job.get("progress") or {}
                if progress.get("total_steps") and bar.total != progress["total_steps"]:
                    bar.total = progress["total_steps"]
                bar.n = progress.get("step") or 0
                bar.set_postfix_str(progress_text(job), refresh=False)
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()
    print(_summary(job), file=sys.stderr)
    return job


def _method(args: argparse.Namespace) -> str:
    """The form's `method`: the bare name, or (reinforcement) a JSON object with the grader file's grader and the
    --method-set options."""
    options = _hyperparameters(args.method_set)
    if args.method != "reinforcement":
        if args.grader is not None:
            raise CLIError("--grader goes with --method reinforcement")
        return json.dumps({"type": args.method, **options}) if options else str(args.method)
    if args.grader is None:
        raise CLIError("--method reinforcement needs --grader grader.json: the reward its samples are scored by")
    try:
        grader = json.loads(Path(args.grader).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CLIError(f"--grader {args.grader}: not a JSON grader ({exc})") from None
    return json.dumps({"type": "reinforcement", "grader": grader, **options})


def cmd_train(args: argparse.Namespace) -> int:
    data = Path(args.dataset).read_bytes()
    form = {
        "name": args.name,
        "hyperparameters": json.dumps(_hyperparameters(args.set)),
        "method": _method(args),
    }
    # Without --template the gateway chooses: chatml, or the template of the adapter training continues from.
    if args.template is not None:
        form["template"] = args.template
    if args.start_from is not None:
        form["model"] = args.start_from
    with connect(args) as client:
        from client.cli_evals import training_gate  # here: that module builds on this one's client

        gate = training_gate(client, args)
        if gate is not None:
            form["eval_gate"] = json.dumps(gate)
        job = checked(
            client.post(
                "/adapters",
                data=form,
                files={"dataset": (Path(args.dataset).name, data, "application/jsonl")},
            )
        )
        print(f"job {job['id']} queued: adapter {job['name']} version {job['version']}")
        if not args.follow:
            return 0
        job = follow(client, job["id"])
    return _report(job)


def evaluation_lines(metrics: dict[str, Any]) -> list[str]:
    """The held-out evaluation of a trained skill, adapter beside base, as lines of text (none if absent)."""

    def figure(key: str) -> str:
        value = metrics.get(key)
        return f"{value:.3f}" if isinstance(value, int | float) else "-"

    lines = []
    if "eval_preference_accuracy" in metrics:  # a DPO skill (trainer/evaluate.py evaluate_preferences)
        lines += [
            f"preference on {metrics.get('eval_pairs')} held-out pairs (log-probability of the whole answer):",
            f"  {'':12} {'adapter':>8} {'base':>8}",
            f"  {'accuracy':12} {figure('eval_preference_accuracy'):>8} {figure('base_preference_accuracy'):>8}"
            "   (adapter: implicit reward vs the base; base: preferred answer likelier)",
            f"  {'likelier':12} {figure('eval_likelihood_preference'):>8} {figure('base_preference_accuracy'):>8}"
            "   (preferred answer likelier than the other)",
            f"  {'margin':12} {figure('eval_reward_margin'):>8} {'-':>8}   (mean reward margin, beta x log-ratio)",
        ]
    if "eval_rouge_l" not in metrics:
        return lines
    lines += [
        f"evaluation on {metrics.get('eval_generated')} held-out rows (greedy):",
        f"  {'':12} {'adapter':>8} {'base':>8}",
        f"  {'exact match':12} {figure('eval_exact_match'):>8} {figure('base_exact_match'):>8}",
        f"  {'ROUGE-L':12} {figure('eval_rouge_l'):>8} {figure('base_rouge_l'):>8}",
        f"  {'eval loss':12} {figure('eval_loss'):>8} {figure('base_eval_loss'):>8}",
    ]
    for sample in metrics.get("samples") or []:
        lines += [
            f"  prompt:    {sample.get('prompt', '')!r}",
            f"  reference: {sample.get('reference', '')!r}",
            f"  adapter:   {sample.get('adapter', '')!r}",
            f"  base:      {sample.get('base', '')!r}",
        ]
    return lines


def checkpoint_lines(metrics: dict[str, Any]) -> list[str]:
    """Which step was published and why, and how far the skill moved the model outside itself."""
    lines = [f"kept: {metrics['kept_reason']}"] if metrics.get("kept_reason") else []
    if "forgetting_kl" in metrics:
        lines.append(
            f"forgetting on {metrics.get('forgetting_prompts')} general prompts: KL from the base "
            f"{metrics['forgetting_kl']:.3f} nats/token, top-token agreement {metrics['forgetting_agreement']:.1%}"
        )
    return lines


def _report(job: dict[str, Any]) -> int:
    for line in checkpoint_lines(job.get("metrics") or {}) + evaluation_lines(job.get("metrics") or {}):
        print(line)
    if job.get("status") == "succeeded":
        print(f"adapter {job['name']} is ready: call it with model={job['name']!r}")
        return 0
    print(f"job {job.get('id')} {job.get('status')}: {job.get('error') or ''}", file=sys.stderr)
    return 1


def cmd_follow(args: argparse.Namespace) -> int:
    with connect(args) as client:
        return _report(follow(client, args.job_id))


def cmd_adapters(args: argparse.Namespace) -> int:
    with connect(args) as client:
        adapters = checked(client.get("/adapters"))["data"]
    print(f"{'NAME':24} {'STATUS':10} {'VERSIONS':>8}  LATEST")
    for a in adapters:
        print(f"{a['name']:24} {a['status']:10} {a['versions']:>8}  {a['latest'] or '-'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with connect(args) as client:
        adapter = checked(client.get(f"/adapters/{args.name}"))
    manifest = adapter.get("manifest") or {}
    print(f"adapter {adapter['name']}: {adapter['status']}, latest version {adapter['latest'] or '-'}")
    if manifest:
        lora = manifest.get("lora") or {}
        print(
            f"  base {manifest['base_model']}, template {manifest['template_name']}, "
            f"LoRA rank {lora.get('rank')} alpha {lora.get('alpha')}, {manifest.get('dataset_rows')} rows"
        )
    metrics = (manifest or {}).get("metrics") or {}
    lines = checkpoint_lines(metrics) + evaluation_lines(metrics)
    print("\n".join(lines) if lines else "  no evaluation recorded for this version")
    jobs = adapter.get("jobs") or []
    if jobs and jobs[0]["status"] == "failed":  # the newest training run, e.g. one the score guard stopped
        print(f"newest job {jobs[0]['id']} failed: {jobs[0].get('error') or ''}")
        print("\n".join(evaluation_lines(jobs[0].get("metrics") or {})))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.job_id:
            print(json.dumps(checked(client.get(f"/jobs/{args.job_id}")), indent=2))
            return 0
        jobs = checked(client.get("/jobs"))["data"]
    print(f"{'JOB':34} {'NAME':20} {'STATUS':10} {'STEP':>9}  LOSS")
    for j in jobs:
        p = j["progress"]
        loss = f"{p['loss']:.4f}" if p.get("loss") is not None else "-"
        print(f"{j['id']:34} {j['name']:20} {j['status']:10} {p['step']:>4}/{p['total_steps']:<4}  {loss}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with connect(args) as client:
        job = checked(client.delete(f"/jobs/{args.job_id}"))
    print(f"job {job['id']}: {job['status']}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        checked(client.delete(f"/adapters/{args.model}"))
    print(f"deleted {args.model}")
    return 0


def moment(text: str) -> float:
    """`--since`/`--until`: unix seconds, or an ISO 8601 date or time (UTC unless it names its offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither unix seconds nor an ISO date (2026-12-04T10:30)") \
            from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def cmd_audit(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit, "after": args.after}
    project_only = {"--outcome": args.outcome, "--object": args.object, "--key-id": args.key_id,
                    "--since": args.since, "--until": args.until}  # fmt: skip
    if args.organization and (given := [flag for flag, value in project_only.items() if value is not None]):
        print(f"error: {', '.join(given)} filter a project's log, not the organisation's", file=sys.stderr)
        return 2
    if args.organization:  # the operator's: OpenAI's audit_logs filters
        path = "/v1/organization/audit_logs"
        params |= {"project_ids[]": args.project, "event_types[]": args.action}
    else:
        path = "/v1/audit"
        params |= {"action": args.action, "outcome": args.outcome, "object_id": args.object,
                   "actor_key_id": args.key_id, "start_time": args.since, "end_time": args.until}  # fmt: skip
    with connect(args) as client:
        page = checked(client.get(path, params={k: v for k, v in params.items() if v is not None}))
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    print(f"{'WHEN (UTC)':19} {'KEY':20} {'ROLE':9} {'ACTION':24} {'OBJECT':36} OUTCOME")
    for e in page["data"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["created_at"]))
        actor = e["actor"]
        outcome = f"{e['status_code'] or ''} {e['error_code'] or e['outcome']}".strip()
        print(f"{when:19} {actor['key_id'] or '-':20} {actor['role']:9} {e['action']:24} {e['object_id'] or '-':36} "
              f"{outcome}")
    if page["has_more"]:
        print(f"(more: --after {page['last_id']})")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.message}
    ]
    body: dict[str, Any] = {
        "model": args.model,
        "messages": messages,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "stream": True,
    }
    with connect(args) as client, client.stream("POST", "/v1/chat/completions", json=body) as stream:
        if not stream.is_success:
            stream.read()
            checked(stream)
        for line in stream.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                raise CLIError(chunk["error"]["message"])
            for choice in chunk.get("choices", []):
                print(choice["delta"].get("content") or "", end="", flush=True)
    print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skillserve", description=__doc__)
    parser.add_argument(
        "--url",
        default=os.environ.get("SKILLSERVE_URL", DEFAULT_URL),
        help=f"gateway URL (env SKILLSERVE_URL, default {DEFAULT_URL})",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get("SKILLSERVE_API_KEY"),
        help="API key (env SKILLSERVE_API_KEY); training and deleting need an admin key",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train an adapter from a JSONL dataset")
    train.add_argument(
        "dataset", help="JSONL file: chat `messages`, alpaca `instruction`/`output`, or prompt/completion"
    )
    train.add_argument("--name", required=True, help="adapter name (the model name clients will use)")
    train.add_argument(
        "--template", default=None, help="chatml, alpaca, instruction or base (default chatml; with --from, the "
        "adapter's own)"
    )
    train.add_argument(
        "--from", dest="start_from", metavar="MODEL", default=None,
        help="continue from an adapter (name, name@version, an alias or an ft: id): its weights, rank and template; "
        "the new version names it as its parent",
    )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a hyperparameter, e.g. --set rank=16 --set max_steps=40 (repeatable)",
    )
    train.add_argument(
        "--method", default="supervised", choices=("supervised", "dpo", "reinforcement"),
        help="supervised (the rows above), dpo (OpenAI preference rows: input, preferred_output, "
        "non_preferred_output) or reinforcement (prompt rows, rewarded by --grader)",
    )
    train.add_argument(
        "--grader", metavar="grader.json", default=None,
        help="reinforcement: a file holding one of OpenAI's graders (string_check, text_similarity, multi), the reward",
    )
    train.add_argument(
        "--method-set", action="append", default=[], metavar="KEY=VALUE",
        help="a method option, e.g. --method-set samples_per_prompt=4 --method-set kl_beta=0.02 (repeatable)",
    )
    train.add_argument("--follow", action="store_true", help="show progress until the job finishes")
    from client.cli_evals import add_gate_options  # here: that module builds on this one's client

    add_gate_options(train)
    train.set_defaults(func=cmd_train)

    follow_cmd = sub.add_parser("follow", help="show a job's progress until it finishes")
    follow_cmd.add_argument("job_id")
    follow_cmd.set_defaults(func=cmd_follow)

    sub.add_parser("adapters", help="list adapters").set_defaults(func=cmd_adapters)

    show = sub.add_parser("show", help="show one adapter: its newest version and how it scored on held-out rows")
    show.add_argument("name")
    show.set_defaults(func=cmd_show)

    jobs = sub.add_parser("jobs", help="list jobs, or show one")
    jobs.add_argument("job_id", nargs="?")
    jobs.set_defaults(func=cmd_jobs)

    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job_id")
    cancel.set_defaults(func=cmd_cancel)

    delete = sub.add_parser("delete", help="delete an adapter (or one version: name@version)")
    delete.add_argument("model")
    delete.set_defaults(func=cmd_delete)

    chat = sub.add_parser("chat", help="send one message and stream the answer")
    chat.add_argument("message")
    chat.add_argument("--model", required=True, help="adapter name, adapter@version or the base model id")
    chat.add_argument("--system", default=None, help="a system message")
    chat.add_argument("--temperature", type=float, default=0.0)
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.set_defaults(func=cmd_chat)

    audit = sub.add_parser("audit", help="the project's audit log, newest first (admin key)")
    audit.add_argument("--action", default=None, help="only this action, e.g. adapter.delete or alias.set")
    audit.add_argument("--outcome", default=None, choices=("succeeded", "failed"), help="only actions that ended so")
    audit.add_argument("--object", default=None, metavar="ID", help="only entries of this object (an id, name@version)")
    audit.add_argument("--key-id", default=None, metavar="KEY_ID", help="only what this key did (its id, key_...)")
    audit.add_argument("--since", type=moment, default=None, metavar="TIME",
                       help="only entries at or after this time: unix seconds or ISO 8601 (UTC unless it says)")
    audit.add_argument("--until", type=moment, default=None, metavar="TIME", help="only entries before this time")
    audit.add_argument("--after", default=None, metavar="ID", help="the page after this entry (older ones)")
    audit.add_argument("--limit", type=int, default=20, help="entries per page (at most 100)")
    audit.add_argument("--json", action="store_true", help="the API's JSON as it came")
    audit.add_argument("--organization", action="store_true",
                       help="the organisation's log: every operator action on projects and keys (operator key)")
    audit.add_argument("--project", default=None, help="with --organization: only actions on this project")
    audit.set_defaults(func=cmd_audit)

    from client.cli_evals import add_eval_commands  # here: that module builds on this one's client

    add_eval_commands(sub)
    from client.cli_projects import add_project_commands  # likewise

    add_project_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"error: cannot reach the gateway at {args.url}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # `python -m client.cli`: run the imported module's main, so errors raised by client.cli_evals (which imports
    # client.cli) are the CLIError that main catches, not a second copy's.
    from client.cli import main as imported_main

    raise SystemExit(imported_main())
