"""Aliases: aliases/<name>/<revision>.json, append-only, each revision a conditional put.

Every change to an adapter's aliases, a delete's included, is one revision written with if_absent over the
revision it read, so the changes are totally ordered. A delete first writes a revision that drops the aliases
pointing at the versions it deletes and lists those versions as `unpublished`, and only then removes their
manifests; an alias write refuses a version the revision it read lists, or whose manifest is gone. So an alias
write that lands before the delete's revision is seen (and undone) by the delete, and one that lands after it
read the delete's revision and refuses: no interleaving leaves an alias pointing at a deleted version.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from enum import Enum
from typing import Protocol, cast

from adapters.errors import AlreadyExists, Conflict, InvalidName, InvalidRequest, NotFound
from adapters.gates import check_version, criterion_names, unknown_criteria
from adapters.registry.keys import adapter_prefix, alias_key, alias_prefix, is_manifest_key, manifest_key
from adapters.schema import (
    GENERATED_VERSION_RE,
    LATEST,
    Aliases,
    AliasTarget,
    EvalGate,
    EvalRecord,
    EvalRunRecord,
    check_name,
)
from adapters.store import ObjectStore

ALIAS_WRITE_ATTEMPTS = 8
ALIAS_REVISIONS_KEPT = 4


def pick_version(aliases: Aliases, ref: str | None, user: str | None) -> str | None:
    """The version a reference means: an alias's (split by `user`), a version named outright, or None (the
    newest) for a bare name whose `latest` was never set."""
    target = aliases.aliases.get(ref or LATEST)
    if target is None:
        return ref
    return target.pick(user if user is not None else uuid.uuid4().hex)


class Keep(Enum):
    """`set_alias`'s gate argument when the call leaves the alias's gate as it is."""

    GATE = "keep"


class _ReadsEvals(Protocol):
    """What checking a gate needs: the gate's eval and its runs."""

    def get_eval(self, eval_id: str) -> EvalRecord: ...
    def list_eval_runs(self, eval_id: str | None = None) -> list[EvalRunRecord]: ...


def gated_versions(previous: AliasTarget | None, target: AliasTarget) -> list[tuple[str, str]]:
    """The versions a move to `target` starts serving (with the request field that names each): a new `version`,
    and a canary whose share goes up (a new canary, or more weight on the same one). Staying put, or lowering a
    canary's weight, needs no eval."""
    moved = []
    if previous is None or previous.version != target.version:
        moved.append((target.version, "version"))
    if target.canary is not None and target.canary_weight > 0:
        before = previous.canary_weight if previous is not None and previous.canary == target.canary else 0.0
        if target.canary_weight > before:
            moved.append((target.canary, "canary"))
    return moved


def check_gate(evals: _ReadsEvals, alias: str, gate: EvalGate) -> None:
    """A gate that can be passed: not on `latest` (every publish moves it), its eval there, and every
    per-criterion minimum naming one of the eval's criteria."""
    if alias == LATEST:
        raise InvalidRequest(
            "latest moves on every publish and cannot be gated: gate the alias users call (e.g. prod)",
            param="gate", code="invalid_gate",
        )
    try:
        evaluation = evals.get_eval(gate.eval_id)
    except NotFound:
        raise NotFound(f"eval {gate.eval_id} not found", param="gate.eval_id") from None
    criteria = criterion_names(evaluation.testing_criteria)
    for unknown in unknown_criteria(gate, criteria):
        raise InvalidRequest(
            f"eval {gate.eval_id} has no criterion {unknown!r} (it has {', '.join(map(repr, criteria))})",
            param=f"gate.criteria.{unknown}", code="invalid_gate",
        )


def pass_gate(evals: _ReadsEvals, name: str, alias: str, gate: EvalGate, version: str, param: str) -> None:
    """`name@version` has a completed run of the gate's eval that passes it; EvalRequired or EvalGateFailed
    (409s naming `param`) otherwise."""
    try:
        evaluation = evals.get_eval(gate.eval_id)
    except NotFound:
        raise NotFound(
            f"alias {alias!r} is gated by eval {gate.eval_id}, which no longer exists: set another gate or "
            "remove it (gate: null)", param="gate.eval_id",
        ) from None
    check_version(
        gate, alias, f"{name}@{version}", evals.list_eval_runs(gate.eval_id),
        criterion_names(evaluation.testing_criteria), param,
    )


class AliasBook:
    """The aliases of every adapter: `latest`, user-named ones, canary splits."""

    store: ObjectStore

    def aliases(self, name: str) -> Aliases:
        """The aliases in force for `name` (revision 0 and none when never set)."""
        keys = [k for k in self.store.list(alias_prefix(name)) if k.endswith(".json")]
        for key in reversed(keys):
            try:
                return Aliases.model_validate_json(self.store.get_bytes(key))
            except NotFound:
                continue  # deleted between list and get
        return Aliases(name=name)

    def set_alias(
        self,
        name: str,
        alias: str,
        target: AliasTarget | None,
        *,
        expected_revision: int | None = None,
        gate: EvalGate | None | Keep = Keep.GATE,
    ) -> Aliases:
        """Point `alias` at `target` (None removes it) in a new revision, written with a conditional put; `gate`
        sets the alias's promotion gate (None removes it), kept across moves until changed.

        With `expected_revision`, the write happens only if that revision is still in force (AlreadyExists
        otherwise: someone moved an alias since it was read); without, a lost race is retried on the new state.
        Refused: an alias named like a version (InvalidName), a version being deleted (Conflict), an unknown version
        or, when removing, an adapter with neither versions nor aliases (NotFound); on a gated alias, a version
        that has no passing run of the gate's eval (EvalRequired, EvalGateFailed: adapters/gates.py)."""
        check_name(alias, "alias")
        if GENERATED_VERSION_RE.fullmatch(alias):
            raise InvalidName(
                f"alias {alias!r} is named like a version: name@{alias} must mean that version", param="alias"
            )
        evals = cast(_ReadsEvals, self)  # a Registry: the alias book and the eval book over one store
        if isinstance(gate, EvalGate):
            check_gate(evals, alias, gate)

        def change(current: Aliases) -> Aliases | None:
            if expected_revision is not None and current.revision != expected_revision:
                raise AlreadyExists(
                    f"aliases of {name} are at revision {current.revision}, not {expected_revision}: "
                    "read them again and retry"
                )
            if self.store.exists(manifest_key(name, alias)):
                raise InvalidName(
                    f"alias {alias!r} is a version of {name}: {name}@{alias} must mean that version", param="alias"
                )
            gates = dict(current.gates)
            if gate is None:
                gates.pop(alias, None)
            elif isinstance(gate, EvalGate):
                gates[alias] = gate
            if target is None:
                if alias in current.aliases or gates != current.gates:
                    return current.model_copy(
                        update={"aliases": {a: t for a, t in current.aliases.items() if a != alias}, "gates": gates}
                    )
                if current.revision == 0 and not any(map(is_manifest_key, self.store.list(adapter_prefix(name)))):
                    raise NotFound(f"adapter {name!r} not found")
                return None  # not set: nothing to remove
            for version, param in ((target.version, "version"), (target.canary, "canary")):
                if version is None:
                    continue
                # Checked on the revision just read, after reading it: see the comment above `aliases`.
                if version in current.unpublished:
                    raise Conflict(f"adapter {name}@{version} is being deleted: no alias can point at it", param=param)
                if not self.store.exists(manifest_key(name, version)):
                    raise NotFound(f"adapter {name}@{version} not found", param=param)
            if alias in gates:
                # Checked on the revision just read: the gate in force is the one the write is conditional on.
                for version, param in gated_versions(current.aliases.get(alias), target):
                    pass_gate(evals, name, alias, gates[alias], version, param)
            return current.model_copy(update={"aliases": {**current.aliases, alias: target}, "gates": gates})

        return self.change_aliases(name, change, conditional=expected_revision is not None)

    def change_aliases(
        self, name: str, change: Callable[[Aliases], Aliases | None], *, conditional: bool = False
    ) -> Aliases:
        """Write `change(current)` as the next revision, if_absent: a lost race reads the new revision and runs
        `change` again (or, `conditional`, is refused). `change` returning None writes nothing."""
        for _ in range(ALIAS_WRITE_ATTEMPTS):
            current = self.aliases(name)
            changed = change(current)
            if changed is None:
                return current
            # Versions whose manifest is gone need no fence: an alias write checks the manifest after its read.
            unpublished = [v for v in changed.unpublished if self.store.exists(manifest_key(name, v))]
            written = Aliases(
                name=name, revision=current.revision + 1, aliases=changed.aliases, gates=changed.gates,
                unpublished=unpublished,
            )
            try:
                self.store.put_bytes(
                    alias_key(name, written.revision), written.model_dump_json(indent=2).encode(), if_absent=True
                )
            except AlreadyExists:
                if conditional:
                    raise AlreadyExists(f"aliases of {name} were changed by another writer meanwhile") from None
                continue
            self._prune_aliases(name, written.revision)
            return written
        raise AlreadyExists(f"aliases of {name} keep changing under this writer; retry")

    def _prune_aliases(self, name: str, revision: int) -> None:
        # Old revisions are history nobody reads; a few stay so a reader between list and get still finds one.
        for key in self.store.list(alias_prefix(name))[:-ALIAS_REVISIONS_KEPT]:
            self.store.delete(key)
