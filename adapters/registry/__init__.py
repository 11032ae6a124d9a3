"""The registry: every record of the service laid out in the object store, the store being the only state.

One class, `Registry`, so that a gateway, a runner and the trainer each hold one object over one store; its
methods come from one facet per kind of record, each in a module of its own:

| facet | module | records |
| --- | --- | --- |
| `AdapterVersions` (with `AliasBook`) | versions.py, aliases.py | published versions, their files, aliases |
| `JobBook` | jobs.py | job records (compare-and-swap), kept checkpoints |
| `FileBook` | files.py | datasets, OpenAI Files API records |
| `FineTuneBook` | fine_tunes.py | OpenAI fine-tuning records, `ft:` model ids |
| `EvalBook` | evals.py | evals, their runs (compare-and-swap), output items (written once) |
| `BatchBook` | batches.py | batches (compare-and-swap), their lines' results (written once) |
| `CompletionBook` | completions.py | stored chat completions (written once; metadata, feedback swapped) |
| `ProjectBook` | projects.py | projects, their API keys' hashes (at the root; `for_project` gives a project's view) |
| `AuditBook` | audit.py | each project's audit log (written once, never changed; pruned by age) |

`RecordShelf` (records.py) is what the last three share: reads, compare-and-swap through a status table, write-once.

keys.py is the one map of where each lies. A caller that needs one facet types against it (the runners'
`JobRegistry`), not the whole class. A facet that needs another's records says so with a Protocol on `self`.
"""

from __future__ import annotations

from adapters.errors import InvalidName
from adapters.registry.aliases import AliasBook, pick_version
from adapters.registry.audit import AuditBook, AuditFilter
from adapters.registry.batches import BatchBook
from adapters.registry.completions import CompletionBook
from adapters.registry.evals import EvalBook
from adapters.registry.files import FileBook
from adapters.registry.fine_tunes import FineTuneBook
from adapters.registry.jobs import JobBook
from adapters.registry.keys import check_project_key, dataset_key, file_key, job_uri, parse_job_uri
from adapters.registry.projects import ProjectBook, ProjectJobs, scoped_store
from adapters.registry.versions import AdapterVersions, new_manifest
from adapters.schema import DEFAULT_PROJECT, check_project_id
from adapters.store import ObjectStore, PrefixedStore, open_store

__all__ = [
    "AliasBook",
    "AuditBook",
    "AuditFilter",
    "AdapterVersions",
    "BatchBook",
    "CompletionBook",
    "EvalBook",
    "FileBook",
    "FineTuneBook",
    "JobBook",
    "ProjectBook",
    "ProjectJobs",
    "Registry",
    "dataset_key",
    "file_key",
    "job_uri",
    "new_manifest",
    "open_registry",
    "parse_job_uri",
    "pick_version",
]


class Registry(
    AdapterVersions, JobBook, FileBook, FineTuneBook, EvalBook, BatchBook, CompletionBook, ProjectBook, AuditBook
):
    """Publish, find, fetch and delete adapters; keep jobs, datasets, files, fine-tuning records, evals, batches,
    stored completions, projects and keys, and the audit log."""

    def __init__(self, store: ObjectStore, project: str = DEFAULT_PROJECT):
        self.store = store
        self.project = project

    def for_project(self, project_id: str) -> Registry:
        """The registry as one project sees it: every record under its namespace (the default project's at the
        root), so a route holding it cannot reach another project's records, whatever it forgets to check."""
        if project_id == self.project:
            return self
        root = self.store.inner if isinstance(self.store, PrefixedStore) else self.store
        return Registry(scoped_store(root, project_id), project_id)

    def key_named(self, uri: str) -> str:
        """A key of this project's records, from a bare key or a URI under its namespace (the store's root for the
        default project, `projects/<id>/` of it for another): InvalidName for anything else, another project's
        records included."""
        root = self.store.uri.rstrip("/") + "/"
        if "://" in uri:
            if not uri.startswith(root):
                # The store's own URI is not told: on a file store it is a path on this machine.
                raise InvalidName(f"{uri!r} is not inside this project's records in this gateway's store")
            uri = uri[len(root) :]
        return check_project_key(uri, self.project)  # an absolute path is refused, not read as a key


def open_registry(store_uri: str) -> Registry:
    """The registry a job URI's store names (parse_job_uri). When it ends in `projects/<id>`, as the runners launch a
    project's job, it is that project's view of the store's root: it reads and writes the same records as the store
    the URI opens, and knows its project and the root, so what lies outside the project's namespace (the audit log,
    at the root under audit/<project>/) is written where the gateway reads it."""
    root, sep, project = store_uri.rstrip("/").rpartition("/projects/")
    if sep:
        try:
            return Registry(open_store(root)).for_project(check_project_id(project))
        except InvalidName:
            pass  # a store whose own path ends so: not a project's
    return Registry(open_store(store_uri))
