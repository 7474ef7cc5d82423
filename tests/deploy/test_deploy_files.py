"""The deployment files under deploy/, checked offline (no container engine, no cluster): they parse,
every object validates against the Kubernetes, KEDA and Prometheus Operator schemas and the compose
file against the Compose Specification, and what they tell imagegate (commands, ports,
environment, grace periods, model groups) is what imagegate reads."""

from __future__ import annotations

import re
import shlex
import urllib.parse
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

from imagegate.catalog import MODELS
from imagegate.cli import build_parser
from imagegate.config import Settings
from imagegate.media.storage import S3Storage, open_storage

from .support import (
    COMPOSE_FILE,
    CRD_SCHEMAS,
    DEPLOY,
    IMAGEGATE_IMAGES,
    KUBERNETES_SCHEMA,
    ROOT,
    SAMPLE_COMPOSE_VARIABLES,
    SCHEMAS,
    Manifest,
    compose,
    compose_command,
    compose_env,
    compose_raw,
    config_toml,
    duration_seconds,
    flag,
    healthcheck_url,
    imagegate_containers,
    imagegate_services,
    kustomizations,
    literal_env,
    load_json,
    manifests,
    of_kind,
    pod_spec,
    readme_section,
    resolved_settings,
    walk,
    yaml_files,
)

# What a pod or container needs beyond shutdown_grace_seconds to release the GPU, close its
# connections and exit before the kubelet or docker sends SIGKILL.
EXIT_MARGIN_SECONDS = 15
# Flags of the worker's command line that the deployment files pass and that this version's
# parser may not define yet; anything else must parse.
WORKER_FLAGS_OUTSIDE_THE_PARSER = {"--health-port"}


# -- parsing and schemas ----------------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    files = yaml_files()
    assert COMPOSE_FILE in files and len(files) >= 10
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path


def kubernetes_validator(manifest: Manifest) -> jsonschema.protocols.Validator:
    api_version, kind = manifest.doc["apiVersion"], manifest.doc["kind"]
    if (api_version, kind) in CRD_SCHEMAS:
        schema = strict(load_json(CRD_SCHEMAS[(api_version, kind)]))
        # A CRD schema leaves apiVersion and kind to the API server; pin them here.
        schema["properties"]["apiVersion"] = {"const": api_version}
        schema["properties"]["kind"] = {"const": kind}
        return jsonschema.Draft7Validator(schema)
    definitions = load_json(KUBERNETES_SCHEMA)
    group, _, version = api_version.rpartition("/")
    matches = [
        name
        for name, d in definitions["$defs"].items()
        if {"group": group, "version": version, "kind": kind} in d.get("x-kubernetes-group-version-kind", [])
    ]
    assert len(matches) == 1, f"{manifest}: no vendored schema for {api_version} {kind}"
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator({"$ref": f"{definitions['$id']}#/$defs/{matches[0]}"}, registry=registry)


def strict(schema: Any) -> Any:
    """Unknown fields are errors, as kubeconform's strict mode makes them: an object schema with
    properties and no other allowance gets additionalProperties: false."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def test_every_kubernetes_object_validates() -> None:
    objects = manifests()
    kinds = {m.kind for m in objects}
    assert {"Job", "Deployment", "Service", "PodDisruptionBudget", "Secret", "ScaledObject", "ServiceMonitor"} <= kinds
    failures = []
    for m in objects:
        errors = sorted(kubernetes_validator(m).iter_errors(m.doc), key=lambda e: list(e.absolute_path))
        failures += [f"{m}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    assert not failures, "\n".join(failures)


def test_the_validators_catch_mistakes() -> None:
    (api,) = [m for m in of_kind("Deployment") if m.name == "imagegate-api"]
    bad = yaml.safe_load(yaml.safe_dump(api.doc))
    pod_spec(Manifest(api.path, bad))["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    assert not kubernetes_validator(api).is_valid(bad)
    (scaled,) = [m for m in of_kind("ScaledObject") if m.name.endswith("flux1")]
    bad = yaml.safe_load(yaml.safe_dump(scaled.doc))
    bad["spec"]["maxReplicas"] = 3
    assert not kubernetes_validator(scaled).is_valid(bad)


def test_compose_file_follows_the_compose_specification() -> None:
    schema = load_json(SCHEMAS / "compose-spec.json")
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(compose_raw()))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_kustomizations_list_every_manifest_and_image() -> None:
    for kustomization in kustomizations():
        doc = yaml.safe_load(kustomization.read_text())
        listed = {kustomization.parent / r for r in doc["resources"]}
        present = {p for p in kustomization.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert listed == present, kustomization
        images = {i["name"] for i in doc.get("images", [])}
        used = {
            c["image"]
            for m in manifests()
            if m.path.parent == kustomization.parent
            for c in imagegate_containers(m)
        }
        assert used <= images, f"{kustomization}: images without a tag: {used - images}"


# -- what the files tell imagegate ---------------------------------------------------------------------


def parse_imagegate(args: list[str]) -> Any:
    """Parse a container's arguments as `imagegate` (the images' entrypoint) would."""
    namespace, unknown = build_parser().parse_known_args(args)
    if namespace.command == "worker":
        leftover = {a for a in unknown if a.startswith("--")}
        assert leftover <= WORKER_FLAGS_OUTSIDE_THE_PARSER, f"{args}: unknown flags {leftover}"
        assert len(unknown) == 2 * len(leftover), f"{args}: stray arguments {unknown}"
    else:
        assert not unknown, f"{args}: unknown arguments {unknown}"
    return namespace


def env_names_are_settings(env: dict[str, str], where: str) -> None:
    fields = Settings.model_fields
    for name in env:
        if not name.startswith("IMAGEGATE_") or name == "IMAGEGATE_CONFIG":
            continue
        field, _, nested = name.removeprefix("IMAGEGATE_").lower().partition("__")
        assert field in fields, f"{where}: {name} is not a setting (imagegate would ignore it)"
        if nested:
            assert fields[field].annotation is not None and "dict" in str(fields[field].annotation), f"{where}: {name}"


def test_compose_services_ports_and_environment_match_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"postgres", "s3", "s3-init", "migrate", "api", "worker"}
    ours = imagegate_services(doc)
    assert set(ours) == {"migrate", "api", "worker"}

    postgres_env = compose_env(services["postgres"])
    for name, service in ours.items():
        env = compose_env(service)
        env_names_are_settings(env, f"compose service {name}")
        settings = resolved_settings(env, None, tmp_path, monkeypatch)
        # The database is the postgres service, as its own variables define it.
        db = urllib.parse.urlsplit(settings.resolved_database_url)
        assert (db.scheme, db.hostname, db.port) == ("postgresql+psycopg", "postgres", 5432)
        assert (db.username, db.password, db.path) == (
            postgres_env["POSTGRES_USER"],
            postgres_env["POSTGRES_PASSWORD"],
            "/" + postgres_env["POSTGRES_DB"],
        )
        # The media are in the bucket that s3-init creates, on the s3 service's port.
        storage = open_storage(settings.resolved_storage_url)
        assert isinstance(storage, S3Storage)
        s3_port = int(services["s3"]["ports"][0].split(":")[1])
        assert storage.endpoint_url == f"http://s3:{s3_port}" and f"-s3.port={s3_port}" in services["s3"]["command"]
        assert storage.presign_endpoint_url == f"http://localhost:{s3_port}"
        assert f"-name {storage.bucket}" in services["s3-init"]["command"][0]
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            SAMPLE_COMPOSE_VARIABLES["S3_ACCESS_KEY"],
            SAMPLE_COMPOSE_VARIABLES["S3_SECRET_KEY"],
        )
        assert settings.admin_token == SAMPLE_COMPOSE_VARIABLES["ADMIN_TOKEN"]
        parse_imagegate(compose_command(service))
        if name != "migrate":
            assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
            # Docker's stop signal is SIGTERM; SIGKILL follows after stop_grace_period.
            grace = duration_seconds(service["stop_grace_period"])
            assert grace >= settings.shutdown_grace_seconds + EXIT_MARGIN_SECONDS, name

    api = ours["api"]
    args = compose_command(api)
    api_settings = resolved_settings(compose_env(api), None, tmp_path, monkeypatch)
    port = int(flag(args, "--port") or api_settings.port)
    assert flag(args, "--host") == "0.0.0.0"
    assert api["ports"] == [f"{port}:{port}"]
    assert urllib.parse.urlsplit(healthcheck_url(api["healthcheck"]["test"])).port == port
    assert healthcheck_url(api["healthcheck"]["test"]).endswith("/readyz")
    assert api_settings.embedded_workers == 0 and api_settings.base_url == f"http://localhost:{port}"

    worker = ours["worker"]
    health_port = int(flag(compose_command(worker), "--health-port") or 0)
    url = healthcheck_url(worker["healthcheck"]["test"])
    assert urllib.parse.urlsplit(url).port == health_port and url.endswith("/healthz")
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]


def test_compose_refuses_to_start_without_its_secrets() -> None:
    for name in SAMPLE_COMPOSE_VARIABLES:
        variables = {k: v for k, v in SAMPLE_COMPOSE_VARIABLES.items() if k != name}
        with pytest.raises(KeyError, match=name):
            compose(variables)
    example = (DEPLOY / "env.example").read_text()
    assert set(SAMPLE_COMPOSE_VARIABLES) <= set(re.findall(r"^([A-Z0-9_]+)=", example, re.M))


def test_kubernetes_environment_and_config_are_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_toml()
    for m in manifests():
        for container in imagegate_containers(m):
            env_names = {e["name"]: "" for e in container.get("env", [])}
            env_names_are_settings(env_names, str(m))
            env = literal_env(container)
            assert env.get("IMAGEGATE_CONFIG") == "/etc/imagegate/imagegate.toml", str(m)
            mounts = {v["mountPath"]: v["name"] for v in container["volumeMounts"]}
            volumes = {v["name"]: v for v in pod_spec(m)["volumes"]}
            assert volumes[mounts["/etc/imagegate"]]["configMap"]["name"] == "imagegate-config", str(m)
            settings = resolved_settings(env, config, tmp_path, monkeypatch)
            assert isinstance(open_storage(settings.resolved_storage_url), S3Storage), str(m)
            parse_imagegate(container["args"])


def test_secret_and_volume_references_exist() -> None:
    secrets = {m.name: set(m.doc["stringData"]) for m in of_kind("Secret")}
    claims = {m.name for m in of_kind("PersistentVolumeClaim")}
    config_maps = {m.name for m in of_kind("ConfigMap")}
    for m in manifests():
        for node in walk(m.doc):
            ref = node.get("secretKeyRef")
            if ref and not ref.get("optional"):
                assert ref["key"] in secrets.get(ref["name"], set()), f"{m}: secret {ref}"
            if "configMap" in node and isinstance(node["configMap"], dict):
                assert node["configMap"]["name"] in config_maps, str(m)
            if "persistentVolumeClaim" in node:
                assert node["persistentVolumeClaim"]["claimName"] in claims, str(m)
    (auth,) = of_kind("TriggerAuthentication")
    for target in auth.doc["spec"]["secretTargetRef"]:
        assert target["key"] in secrets[target["name"]]


def test_termination_grace_covers_shutdown_grace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_toml()
    deployments = [m for m in of_kind("Deployment") if imagegate_containers(m)]
    assert len(deployments) == 5
    for m in deployments:
        (container,) = imagegate_containers(m)
        settings = resolved_settings(literal_env(container), config, tmp_path, monkeypatch)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        needed = settings.shutdown_grace_seconds + pre_stop + EXIT_MARGIN_SECONDS
        assert pod_spec(m)["terminationGracePeriodSeconds"] >= needed, str(m)


def test_probes_point_at_the_health_endpoints() -> None:
    (api,) = [m for m in of_kind("Deployment") if m.name == "imagegate-api"]
    (container,) = imagegate_containers(api)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(flag(container["args"], "--port") or 0)
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    (service,) = [m for m in of_kind("Service") if m.name == "imagegate-api"]
    assert service.doc["spec"]["ports"][0]["targetPort"] == "http"
    assert service.doc["spec"]["selector"] == api.doc["spec"]["selector"]["matchLabels"]
    (budget,) = of_kind("PodDisruptionBudget")
    assert budget.doc["spec"]["selector"] == api.doc["spec"]["selector"]
    assert budget.doc["spec"]["minAvailable"] < api.doc["spec"]["replicas"]
    for m in of_kind("Deployment"):
        if m.name.startswith("imagegate-worker-"):
            (worker,) = imagegate_containers(m)
            ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
            assert ports["health"] == int(flag(worker["args"], "--health-port") or 0), str(m)
            assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
            assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    # Each ServiceMonitor scrapes /metrics on a named port of the Services it selects.
    services = of_kind("Service")
    for monitor in of_kind("ServiceMonitor"):
        wanted = monitor.doc["spec"]["selector"]["matchLabels"]
        selected = [m for m in services if wanted.items() <= m.doc["metadata"]["labels"].items()]
        assert selected, f"{monitor}: selects no Service"
        for endpoint in monitor.doc["spec"]["endpoints"]:
            assert endpoint["path"] == "/metrics"
            assert all(endpoint["port"] in {p["name"] for p in m.doc["spec"]["ports"]} for m in selected), str(monitor)


def worker_groups() -> dict[str, tuple[Manifest, Manifest]]:
    deployments = {m.name: m for m in of_kind("Deployment") if m.name.startswith("imagegate-worker-")}
    scaled = {m.doc["spec"]["scaleTargetRef"]["name"]: m for m in of_kind("ScaledObject")}
    assert set(scaled) == set(deployments), "one ScaledObject per worker Deployment"
    return {name: (deployments[name], scaled[name]) for name in deployments}


def group_query_models(query: str) -> list[str]:
    (models,) = re.findall(r"model_id = ANY\('\{([^}]*)\}'\)", query)
    return models.split(",")


def test_worker_groups_cover_the_catalog_once() -> None:
    served: list[str] = []
    for name, (deployment, scaled) in worker_groups().items():
        (container,) = imagegate_containers(deployment)
        models = (flag(container["args"], "--models") or "").split(",")
        served += models
        (trigger,) = scaled.doc["spec"]["triggers"]
        assert trigger["type"] == "postgresql" and trigger["authenticationRef"]["name"] == "imagegate-postgres"
        # KEDA counts exactly the jobs this group's workers claim.
        assert group_query_models(trigger["metadata"]["query"]) == models, name
        assert "replicas" not in deployment.doc["spec"], f"{name}: KEDA owns the replica count"
        resources = container["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1, name
        assert container["image"] == "imagegate-gpu"
    assert sorted(served) == sorted(MODELS), "every model is served by exactly one worker group"


# -- the images -----------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def pip_installs(text: str) -> set[tuple[str, ...]]:
    found = set()
    for command in re.split(r"&&|\n", text):
        if "pip install" not in command:
            continue
        words = shlex.split(command, comments=True)
        for i in range(len(words) - 1):
            if words[i].endswith("pip") and words[i + 1] == "install":
                found.add(tuple(w for w in words[i + 2 :] if w not in ("-q", "--quiet")))
    return found


@pytest.mark.parametrize(("dockerfile", "image"), [("Dockerfile", "imagegate-gpu"), ("Dockerfile.cpu", "imagegate-cpu")])
def test_dockerfile_commands_are_the_readmes(dockerfile: str, image: str) -> None:
    path = DEPLOY / dockerfile
    instructions = dockerfile_instructions(path)
    readme = readme_section("Deploying")
    shell = "\n".join(re.findall(r"```sh\n(.*?)```", readme, re.S))
    # The image is built the way the README says, and installs what the README's steps install.
    assert f"docker build -f deploy/{dockerfile} -t {image}:" in shell
    installs = pip_installs("\n".join(arg for op, arg in instructions if op == "RUN"))
    assert installs and installs <= pip_installs(shell), installs - pip_installs(shell)
    ops = dict(instructions)
    assert ops["ENTRYPOINT"] == '["imagegate"]'
    user = [arg for op, arg in instructions if op == "USER"][-1]
    assert user.isdigit() and int(user) != 0
    parse_imagegate(shlex.split(ops["CMD"].strip("[]").replace('", "', " ").strip('"')))
    assert image in IMAGEGATE_IMAGES


def test_images_pin_torch_like_the_project() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    (pin,) = re.findall(r'"(torch==[^"]+)"', pyproject)
    gpu = pip_installs("\n".join(a for op, a in dockerfile_instructions(DEPLOY / "Dockerfile") if op == "RUN"))
    cpu = pip_installs("\n".join(a for op, a in dockerfile_instructions(DEPLOY / "Dockerfile.cpu") if op == "RUN"))
    assert (pin, "--index-url", "https://download.pytorch.org/whl/cu128") in gpu
    assert (pin, "--index-url", "https://download.pytorch.org/whl/cpu") in cpu
    assert (".[gpu]",) in gpu and (".",) in cpu
    base = [a for op, a in dockerfile_instructions(DEPLOY / "Dockerfile") if op == "FROM"]
    assert base and base[0].startswith("nvidia/cuda:") and "-runtime-" in base[0]


def test_readme_names_the_files_it_documents() -> None:
    readme = readme_section("Deploying")
    for path in [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.cpu", COMPOSE_FILE, *kustomizations()]:
        assert str(path.relative_to(ROOT)) in readme or str(path.parent.relative_to(ROOT)) in readme, path
