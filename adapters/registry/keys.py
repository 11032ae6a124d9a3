"""Where each record lies in the object store: the one map of keys, shared by every facet of the registry.

adapters/<name>/<version>/blobs/<sha256>, manifest.json (last)   an adapter version (versions.py)
aliases/<name>/<revision>.json                                   its aliases, append-only (aliases.py)
jobs/<job-id>.json, checkpoints/<job-id>/step-<n>/               training jobs (jobs.py)
datasets/<sha256>.jsonl, files/<file-id>.json                    datasets and OpenAI files (files.py)
fine_tunes/<job-id>.json, ft_models/<sha256 of the id>.json      OpenAI fine-tuning records (fine_tunes.py)
evals/<eval-id>.json, eval_runs/<eval-id>/<run-id>.json,
eval_items/<run-id>/<row>.json                                   evals, their runs, output items (evals.py)
batches/<batch-id>.json, batch_lines/<batch-id>/<line>.json      batches, their lines' results (batches.py)
completions/<chatcmpl-id>.json                                   stored chat completions (completions.py)
audit/<project>/<audit-id>.json                                  the audit log, append-only, time-sorted (audit.py);
                                                                 every project's at the root (one writer per gateway)
org/projects/<project-id>.json, org/keys/<sha256 of the key>.json projects and their API keys (projects.py)
org/projects/<project-id>/keys/<sha256>.json, org/key_index.json  each project's keys, an index (projects.py)
projects/<project-id>/...                                        every key above, of a project other than default

The default project's records lie at the root, as they always have (a store written before projects reads
unchanged); another project's lie under its prefix, through a Registry over a PrefixedStore (Registry.for_project).
"""

from __future__ import annotations

import hashlib
import re

from adapters.errors import InvalidAdapter, InvalidName
from adapters.schema import (
    AUDIT_ID_RE,
    BATCH_ID_RE,
    DEFAULT_PROJECT,
    EVAL_ID_RE,
    EVAL_RUN_ID_RE,
    KEY_HASH_RE,
    KEY_ID_RE,
    STORED_COMPLETION_ID_RE,
    Manifest,
    check_job_id,
    check_name,
    check_project_id,
)
from adapters.store import check_key

MANIFEST = "manifest.json"
DATASET_KEY_RE = re.compile(r"datasets/[0-9a-f]{64}\.jsonl")


def adapter_prefix(name: str, version: str | None = None) -> str:
    """The store prefix of an adapter (or of one version), ending in '/'."""
    check_name(name)
    if version is None:
        return f"adapters/{name}/"
    return f"adapters/{name}/{check_name(version, 'version')}/"


def manifest_key(name: str, version: str) -> str:
    return adapter_prefix(name, version) + MANIFEST


def file_key(manifest: Manifest, filename: str) -> str:
    """Where one file of a published version lies: its content address, or beside the manifest for manifests
    published before content addressing."""
    entry = manifest.files[filename]
    return adapter_prefix(manifest.name, manifest.version) + (entry.key or check_filename(filename))


def alias_prefix(name: str) -> str:
    return f"aliases/{check_name(name)}/"


def alias_key(name: str, revision: int) -> str:
    return f"{alias_prefix(name)}{revision:012d}.json"  # zero-padded: list order is revision order


def job_key(job_id: str) -> str:
    return f"jobs/{check_job_id(job_id)}.json"


# The one contract between gateway and trainer: a runner launches `python -m trainer run <job URI>`, and the
# trainer finds the store and its job record from that URI alone.
def job_uri(store_uri: str, job_id: str) -> str:
    """`<store-uri>/jobs/<id>.json`: the job record inside the store, what the trainer is launched with."""
    return f"{store_uri.rstrip('/')}/{job_key(job_id)}"


def parse_job_uri(uri: str) -> tuple[str, str]:
    """`<store-uri>/jobs/<id>.json` -> (store uri, job id); InvalidName for anything else."""
    root, sep, leaf = uri.rpartition("/jobs/")
    if not sep or not leaf.endswith(".json"):
        raise InvalidName(f"not a job URI (expected <store-uri>/jobs/<id>.json): {uri!r}")
    return root, check_job_id(leaf.removesuffix(".json"))


def checkpoint_prefix(job_id: str, step: int) -> str:
    return f"checkpoints/{check_job_id(job_id)}/step-{int(step)}/"


def dataset_key(sha256: str) -> str:
    return f"datasets/{sha256}.jsonl"


def stored_file_key(file_id: str) -> str:
    return f"files/{file_id}.json"


def fine_tuned_model_key(model_id: str) -> str:
    # ft: ids hold ':' and capitals, which store keys may not: the record lies under the id's hash.
    return f"ft_models/{hashlib.sha256(model_id.encode()).hexdigest()}.json"


def _checked(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidName(f"invalid {what} {value!r}")
    return value


def eval_key(eval_id: str) -> str:
    return f"evals/{_checked(eval_id, EVAL_ID_RE, 'eval id')}.json"


def eval_runs_prefix(eval_id: str) -> str:
    return f"eval_runs/{_checked(eval_id, EVAL_ID_RE, 'eval id')}/"


def eval_run_key(eval_id: str, run_id: str) -> str:
    return f"{eval_runs_prefix(eval_id)}{_checked(run_id, EVAL_RUN_ID_RE, 'run id')}.json"


def eval_items_prefix(run_id: str) -> str:
    return f"eval_items/{_checked(run_id, EVAL_RUN_ID_RE, 'run id')}/"


def eval_item_key(run_id: str, index: int) -> str:
    return f"{eval_items_prefix(run_id)}{int(index):09d}.json"  # zero-padded: list order is row order


def batch_key(batch_id: str) -> str:
    return f"batches/{_checked(batch_id, BATCH_ID_RE, 'batch id')}.json"


def batch_lines_prefix(batch_id: str) -> str:
    return f"batch_lines/{_checked(batch_id, BATCH_ID_RE, 'batch id')}/"


def batch_line_key(batch_id: str, index: int) -> str:
    return f"{batch_lines_prefix(batch_id)}{int(index):09d}.json"  # zero-padded: list order is line order


STORED_COMPLETIONS_PREFIX = "completions/"


def stored_completion_key(completion_id: str) -> str:
    return f"{STORED_COMPLETIONS_PREFIX}{_checked(completion_id, STORED_COMPLETION_ID_RE, 'completion id')}.json"


AUDIT_PREFIX = "audit/"
# The organisation's log: every operator action (/v1/organization), beside each project's, with no project's id.
ORG_AUDIT_LOG = "organization"


def audit_prefix(project: str) -> str:
    """A project's audit entries, ending in '/'."""
    if not isinstance(project, str) or "/" in project:
        raise InvalidName(f"invalid project {project!r}")
    return f"{AUDIT_PREFIX}{check_key(project)}/"


def audit_key(project: str, audit_id: str) -> str:
    # The id begins with its time, zero-padded: list order is time order.
    return f"{audit_prefix(project)}{_checked(audit_id, AUDIT_ID_RE, 'audit entry id')}.json"


def check_filename(filename: str) -> str:
    if "/" in filename or filename == MANIFEST:
        raise InvalidAdapter(f"invalid adapter file name {filename!r}")
    try:
        return check_key(filename)
    except InvalidName as exc:
        raise InvalidAdapter(f"invalid adapter file name {filename!r}: {exc}") from None


def is_manifest_key(key: str) -> bool:
    parts = key.split("/")
    return len(parts) == 4 and parts[0] == "adapters" and parts[3] == MANIFEST


ORG_PROJECTS_PREFIX = "org/projects/"
ORG_KEYS_PREFIX = "org/keys/"


def project_key(project_id: str) -> str:
    return f"{ORG_PROJECTS_PREFIX}{check_project_id(project_id)}.json"


def api_key_key(sha256: str) -> str:
    return f"{ORG_KEYS_PREFIX}{_checked(sha256, KEY_HASH_RE, 'key hash')}.json"


# Written once every key of a store written before the per-project index has its entry in it (projects.py).
KEY_INDEX_BUILT = "org/key_index.json"


def project_keys_prefix(project_id: str) -> str:
    """The index of a project's keys: an entry per key, named by its hash, written with the key and never removed."""
    return f"{ORG_PROJECTS_PREFIX}{check_project_id(project_id)}/keys/"


def project_key_entry(project_id: str, sha256: str) -> str:
    return f"{project_keys_prefix(project_id)}{_checked(sha256, KEY_HASH_RE, 'key hash')}.json"


def api_keys_prefix(key_id: str) -> str:
    """The keys whose hash starts as `key_id` says (one, barring a 64-bit collision)."""
    return ORG_KEYS_PREFIX + _checked(key_id, KEY_ID_RE, "key id").removeprefix("key_")


# What lies at the root beside the default project's records and is none of them: other projects' namespaces, the
# organisation's projects and keys, every project's audit log.
NOT_THE_DEFAULT_PROJECTS = ("projects/", "org/", AUDIT_PREFIX)


def check_project_key(key: str, project_id: str) -> str:
    """`key` as a key a request of `project_id` may name in its namespace (a dataset, an adapter directory to import):
    the default project's namespace is the store's root, and no key of it reaches another project's records."""
    check_key(key)
    if check_project_id(project_id) == DEFAULT_PROJECT and key.startswith(NOT_THE_DEFAULT_PROJECTS):
        raise InvalidName(f"{key!r} is not inside this project's records")
    return key


def project_prefix(project_id: str) -> str:
    """Where a project's records lie: '' for the default project (today's layout), `projects/<id>/` for another."""
    if check_project_id(project_id) == DEFAULT_PROJECT:
        return ""
    return f"projects/{project_id}/"
