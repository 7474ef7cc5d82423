"""Rebuild the vendored schemas in this folder (run by hand; the tests only read the results).

    python tests/deploy/schemas/vendor.py KUBERNETES_VALIDATE_WHEEL SCALEDOBJECTS_CRD TRIGGERAUTHENTICATIONS_CRD SERVICEMONITORS_CRD

* ``kubernetes-<version>-strict.json``: from the ``kubernetes-validate`` wheel (PyPI), its
  ``v<version>-local-strict/_definitions.json`` pruned to the definitions that the kinds in
  ``KINDS`` reach, descriptions dropped. Strict: unknown fields are errors.
* ``<crd>.json``: the ``openAPIV3Schema`` of each CustomResourceDefinition file given, descriptions
  dropped (KEDA's ``config/crd/bases/keda.sh_*.yaml``, prometheus-operator's
  ``example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml``).

``compose-spec.json`` is the Compose Specification's ``schema/compose-spec.json``, copied as is.

Vendored now: kubernetes-validate 1.37.0 (Kubernetes 1.33.0), KEDA v2.20.2, prometheus-operator
v0.93.0, compose-spec as of June 2026.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
KUBERNETES_VERSION = "1.33.0"
# The kinds the manifests under deploy/k8s use.
KINDS = [
    "io.k8s.api.apps.v1.Deployment",
    "io.k8s.api.batch.v1.Job",
    "io.k8s.api.core.v1.ConfigMap",
    "io.k8s.api.core.v1.Namespace",
    "io.k8s.api.core.v1.PersistentVolumeClaim",
    "io.k8s.api.core.v1.Secret",
    "io.k8s.api.core.v1.Service",
    "io.k8s.api.core.v1.ServiceAccount",
    "io.k8s.api.policy.v1.PodDisruptionBudget",
]


def without_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for k, v in node.items() if k != "$ref" for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def kubernetes(wheel: str) -> None:
    member = f"kubernetes_validate/kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict/_definitions.json"
    with zipfile.ZipFile(wheel) as archive:
        full = json.loads(archive.read(member))
    defs = full["$defs"]
    needed: set[str] = set()
    stack = list(KINDS)
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack += [r.split("#/$defs/", 1)[1] for r in refs(defs[name])]
    pruned = {
        "$schema": full["$schema"],
        "$id": full["$id"],
        "$comment": f"kubernetes-validate's v{KUBERNETES_VERSION}-local-strict definitions, pruned to {', '.join(KINDS)}",
        "$defs": {name: without_descriptions(defs[name]) for name in sorted(needed)},
    }
    out = HERE / f"kubernetes-{KUBERNETES_VERSION}-strict.json"
    out.write_text(json.dumps(pruned, indent=1, sort_keys=True) + "\n")


def crd(path: str) -> None:
    doc = yaml.safe_load(Path(path).read_text())
    group, kind = doc["spec"]["group"], doc["spec"]["names"]["kind"]
    (version,) = [v for v in doc["spec"]["versions"] if v.get("storage")]
    schema = without_descriptions(version["schema"]["openAPIV3Schema"])
    schema["$comment"] = f"openAPIV3Schema of the {kind} CRD ({group}/{version['name']}) from {Path(path).name}"
    out = HERE / f"{group}_{version['name']}_{kind.lower()}.json"
    out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    kubernetes(sys.argv[1])
    for crd_file in sys.argv[2:]:
        crd(crd_file)
