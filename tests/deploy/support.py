"""Reading the deployment files under deploy/ the way their tools would, for the offline checks."""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES_SCHEMA = SCHEMAS / "kubernetes-1.33.0-strict.json"
# Custom resources: (apiVersion, kind) -> the vendored openAPIV3Schema of its CRD.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCHEMAS / "keda.sh_v1alpha1_scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): SCHEMAS / "keda.sh_v1alpha1_triggerauthentication.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SCHEMAS / "monitoring.coreos.com_v1_servicemonitor.json",
}
# The images built from deploy/Dockerfile and deploy/Dockerfile.cpu, as the manifests name them.
IMAGEGATE_IMAGES = {"imagegate-gpu", "imagegate-cpu"}


@dataclass(frozen=True)
class Manifest:
    path: Path
    doc: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}: {self.kind}/{self.doc.get('metadata', {}).get('name')}"


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


@cache
def manifests() -> tuple[Manifest, ...]:
    """Every Kubernetes object under deploy/k8s (kustomization files are kustomize's, not objects)."""
    found = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [Manifest(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return tuple(found)


def of_kind(kind: str) -> list[Manifest]:
    return [m for m in manifests() if m.kind == kind]


def pod_spec(m: Manifest) -> dict[str, Any]:
    return m.doc["spec"]["template"]["spec"]


def imagegate_containers(m: Manifest) -> list[dict[str, Any]]:
    if m.kind not in ("Deployment", "Job"):
        return []
    return [c for c in pod_spec(m)["containers"] if c["image"].split(":")[0] in IMAGEGATE_IMAGES]


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def config_toml() -> str:
    (config,) = [m for m in of_kind("ConfigMap") if m.name == "imagegate-config"]
    return str(config.doc["data"]["imagegate.toml"])


def flag(args: list[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` in a command line."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


# -- docker compose -------------------------------------------------------------------------------

# What a user puts in deploy/.env (deploy/env.example lists the same names).
SAMPLE_COMPOSE_VARIABLES = {
    "POSTGRES_PASSWORD": "pg-secret",
    "S3_ACCESS_KEY": "access",
    "S3_SECRET_KEY": "secret",
    "ADMIN_TOKEN": "a-sample-admin-token-32-characters",
}
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def interpolate(node: Any, variables: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` interpolation."""
    if isinstance(node, dict):
        return {k: interpolate(v, variables) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, variables) for v in node]
    if not isinstance(node, str):
        return node

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if variables.get(name):
            return variables[name]
        if op == ":-":
            return arg
        raise KeyError(f"${{{name}}} is required: {arg or 'unset'}")

    return _VARIABLE.sub(one, node)


def compose_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose(variables: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file as `docker compose config` resolves it, with the sample variables."""
    doc = {k: v for k, v in compose_raw().items() if not k.startswith("x-")}
    return interpolate(doc, SAMPLE_COMPOSE_VARIABLES if variables is None else variables)


def compose_command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def imagegate_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in doc["services"].items() if s.get("build", {}).get("dockerfile", "").startswith("deploy/Dockerfile")}


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(number) * units[unit]
    return total


def healthcheck_url(test: list[str]) -> str:
    (url,) = re.findall(r"https?://[^'\" ]+", " ".join(test))
    return url


# -- settings as imagegate resolves them ------------------------------------------------------------------


def resolved_settings(env: dict[str, str], config_text: str | None, tmp_path: Path, monkeypatch: Any) -> Any:
    """imagegate's own resolution of a container's settings: the TOML file, then its IMAGEGATE_*
    variables (and none of this process's)."""
    from imagegate.config import load_settings

    config = None
    if config_text is not None:
        config = tmp_path / "imagegate.toml"
        config.write_text(config_text)
    with monkeypatch.context() as patch:
        for name in [k for k in os.environ if k.startswith("IMAGEGATE_")]:
            patch.delenv(name)
        for name, value in env.items():
            if name.startswith("IMAGEGATE_"):
                patch.setenv(name, value)
        return load_settings(config)


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def load_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)
