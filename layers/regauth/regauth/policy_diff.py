"""Compare two policies: identities added and removed, rights gained and lost.

Rights are compared after compiling, per principal, so a change to a group or to a
grant to `anonymous` shows up at every principal it affects. A right is one action
on one pattern with its effect (allow or deny) and its conditions. Rule ids are shown
but not compared, so renaming a rule is no change of rights. A role's IAM ARN
patterns decide who signs in as it, so patterns added and removed are listed too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from regauth.models import Grant, Principal
from regauth.policy import Policy, compile_policy


@dataclass(frozen=True, slots=True, order=True)
class Right:
    """One action on one resource pattern, granted or denied, with its conditions."""

    effect: str
    type: str
    pattern: str
    action: str
    conditions: str = ""
    rule_id: str = field(default="", compare=False)

    def describe(self) -> str:
        text = f"{self.effect} {self.action} on {self.type} {self.pattern}"
        if self.conditions:
            text += f" when {self.conditions}"
        return f"{text} (rule {self.rule_id})"


@dataclass(frozen=True, slots=True)
class PrincipalChange:
    """Rights one principal gains and loses, and changes of its flag and ARN patterns."""

    principal: str
    gained: tuple[Right, ...] = ()
    lost: tuple[Right, ...] = ()
    disabled: bool | None = None
    arns_added: tuple[str, ...] = ()
    arns_removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    """The changes that applying a new policy would make to the applied one."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changes: tuple[PrincipalChange, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changes)


def _conditions(grant: Grant) -> str:
    parts = []
    if grant.source_ips:
        parts.append("source in " + ", ".join(grant.source_ips))
    if grant.not_before is not None:
        parts.append("from " + _rfc3339(grant.not_before))
    if grant.not_after is not None:
        parts.append("until " + _rfc3339(grant.not_after))
    return " and ".join(parts)


def _rfc3339(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rights_of(principal: Principal) -> dict[Right, Right]:
    """Return the principal's rights, each mapped to itself so its rule id can be read."""
    rights: dict[Right, Right] = {}
    for grant in principal.grants:
        for action in sorted(grant.actions):
            right = Right(
                grant.effect, grant.type, grant.pattern, action, _conditions(grant), grant.rule_id
            )
            rights.setdefault(right, right)
    return rights


def diff_policies(old: Policy | None, new: Policy) -> PolicyDiff:
    """Compare `new` with `old` (None when no policy was applied yet)."""
    before = {p.name: p for p in compile_policy(old).principals} if old is not None else {}
    after = {p.name: p for p in compile_policy(new).principals}

    added = tuple(name for name in after if name not in before)
    removed = tuple(name for name in before if name not in after)
    changes = []
    for name, principal in after.items():
        old_principal = before.get(name)
        old_rights = rights_of(old_principal) if old_principal else {}
        new_rights = rights_of(principal)
        gained = tuple(sorted(new_rights[r] for r in new_rights if r not in old_rights))
        lost = tuple(sorted(old_rights[r] for r in old_rights if r not in new_rights))
        disabled = None
        if old_principal is not None and old_principal.disabled != principal.disabled:
            disabled = principal.disabled
        old_arns = old_principal.arn_patterns if old_principal else ()
        arns_added = tuple(arn for arn in principal.arn_patterns if arn not in old_arns)
        arns_removed = tuple(arn for arn in old_arns if arn not in principal.arn_patterns)
        if gained or lost or disabled is not None or arns_added or arns_removed:
            changes.append(PrincipalChange(name, gained, lost, disabled, arns_added, arns_removed))
    for name in removed:
        lost = tuple(sorted(rights_of(before[name]).values()))
        arns_removed = before[name].arn_patterns
        if lost or arns_removed:
            changes.append(PrincipalChange(name, (), lost, arns_removed=arns_removed))
    return PolicyDiff(added, removed, tuple(changes))


def format_diff(diff: PolicyDiff) -> str:
    """Render a diff as text: `+` for what is added or gained, `-` for what goes."""
    if diff.empty:
        return "no changes"
    lines = []
    if diff.added:
        lines.append("identities added:")
        lines += [f"  + {name}" for name in diff.added]
    if diff.removed:
        lines.append("identities removed:")
        lines += [f"  - {name}" for name in diff.removed]
    if diff.changes:
        lines.append("rights:")
    for change in diff.changes:
        lines.append(f"  {change.principal}:")
        if change.disabled is not None:
            lines.append(f"    ~ disabled: {str(change.disabled).lower()}")
        lines += [f"    + IAM ARN {arn}" for arn in change.arns_added]
        lines += [f"    - IAM ARN {arn}" for arn in change.arns_removed]
        lines += [f"    + {right.describe()}" for right in change.gained]
        lines += [f"    - {right.describe()}" for right in change.lost]
    return "\n".join(lines)
