"""Kubernetes' RBAC authorizer for one service account, from the chart's Roles and their bindings.

A Role grants nothing by itself: only the (Cluster)Roles that a RoleBinding or ClusterRoleBinding binds to
the operator's service account count (kubernetes.io/docs/reference/access-authn-authz/rbac). A RoleBinding
grants its Role's or ClusterRole's rules in the binding's namespace only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from apirules import Refused

OPERATOR_ACCOUNT = ("kubetune-system", "kubetune")  # the chart's release namespace and ServiceAccount name


@dataclass(frozen=True)
class Rule:
    api_groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]
    namespace: str | None  # None: a ClusterRole's rule (every namespace and cluster-scoped objects)


@dataclass
class RBAC:
    """The rights of one service account, as Kubernetes' RBAC authorizer grants them (no wildcards: the chart
    uses none, and its test forbids them). OwnerReferencesPermissionEnforcement (on in OpenShift) is applied
    too: setting blockOwnerDeletion needs `update` on the owner's finalizers subresource."""

    rules: list[Rule]
    user: str = "system:serviceaccount:kubetune-system:kubetune"
    # Every request checked, as (verb, group, resource, namespace), and those refused: what a real run of the
    # operator needed, to compare with what the chart grants (tests/integration/charts/test_rbac.py).
    used: set[tuple[str, str, str, str | None]] = field(default_factory=set)
    refused: list[tuple[str, str, str, str | None]] = field(default_factory=list)

    @staticmethod
    def from_manifests(docs: list[dict[str, Any]], account: tuple[str, str] = OPERATOR_ACCOUNT) -> RBAC:
        """The rules bound to `account` (namespace, name): a ClusterRoleBinding grants everywhere, a
        RoleBinding in its own namespace; an unbound Role grants nothing."""
        roles = {
            (d["kind"], d["metadata"].get("namespace") if d["kind"] == "Role" else None, d["metadata"]["name"]): d
            for d in docs
            if d["kind"] in ("Role", "ClusterRole")
        }
        rules = []
        for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
            subjects = binding.get("subjects") or []
            if not any(
                s.get("kind") == "ServiceAccount" and (s.get("namespace"), s.get("name")) == account for s in subjects
            ):
                continue
            ref = binding["roleRef"]
            scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
            role = roles.get((ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"]))
            rules += [
                Rule(frozenset(r["apiGroups"]), frozenset(r["resources"]), frozenset(r["verbs"]), scope)
                for r in (role or {}).get("rules") or []
            ]
        return RBAC(rules)

    def allows(self, verb: str, group: str, resource: str, namespace: str | None) -> bool:
        return any(
            verb in r.verbs
            and group in r.api_groups
            and resource in r.resources
            and (r.namespace is None or r.namespace == namespace)
            for r in self.rules
        )

    def granted(self) -> set[tuple[str, str, str]]:
        """Every (verb, group, resource) some bound rule grants, wherever."""
        return {(v, g, res) for r in self.rules for v in r.verbs for g in r.api_groups for res in r.resources}

    def check(self, verb: str, group: str, resource: str, namespace: str | None) -> None:
        self.used.add((verb, group, resource, namespace))
        if not self.allows(verb, group, resource, namespace):
            self.refused.append((verb, group, resource, namespace))
            where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
            raise Refused(
                403,
                "Forbidden",
                f'{resource} is forbidden: User "{self.user}" cannot {verb} resource '
                f'"{resource}" in API group "{group}"{where}',
            )
