"""The cluster specs under clusters/: Ray launcher YAMLs validate against the installed Ray's
schema and its own config preparation, KubeRay manifests against KubeRay's CRD schemas, and
nothing makes the dashboard, job API or MLflow listen on every interface; token auth is on."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = REPO / "clusters"
LAUNCHER_SPECS = sorted(CLUSTERS.glob("*.yaml"))
KUBERAY = sorted((CLUSTERS / "kuberay").glob("*.yaml"))
SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "kuberay"
IMAGE = re.compile(r"^rayproject/ray:(\d+\.\d+\.\d+)-py311-cu12\d+$")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_specs_exist():
    assert {p.name for p in LAUNCHER_SPECS} >= {"aws-gpu.yaml", "gcp-gpu.yaml"}
    assert {p.name for p in KUBERAY} >= {"raycluster.yaml", "rayjob.yaml", "networkpolicy.yaml"}


@pytest.mark.parametrize("path", LAUNCHER_SPECS, ids=lambda p: p.name)
def test_launcher_spec_validates_with_ray(path):
    """The installed Ray's ray-schema.json, then prepare_config (defaults merged, setup commands
    merged, docker checked, per-type worker bounds filled) and validate_config, all offline.
    `ray up`'s provider bootstrap (security groups, IAM roles, key pairs, subnets) calls the
    cloud's API with credentials, so it is not run here; what it would act on is checked in
    test_launcher_spec_network_and_scaling."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    prepared = prepare_config(config)
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("path", LAUNCHER_SPECS, ids=lambda p: p.name)
def test_launcher_spec_network_and_scaling(path):
    cfg = yaml.safe_load(path.read_text())
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert len(workers) >= 2
    for name, spec in workers.items():
        assert spec["min_workers"] == 0 and spec["max_workers"] >= 1, name
        assert spec["resources"]["GPU"] == 8, name
    assert cfg["idle_timeout_minutes"] > 0 and cfg["max_workers"] >= 1
    match = IMAGE.match(cfg["docker"]["image"])
    assert match, cfg["docker"]["image"]
    setup = " ".join(cfg["setup_commands"])
    assert "undial-orchestrator @ git+" in setup and "@UNDIAL_VERSION" in setup  # a pinned release, placeholder
    assert f"ray[default,train,tune]=={match.group(1)}" in setup                  # the image's Ray, not another
    provider = cfg["provider"]
    if provider["type"] == "aws":
        spot = [s for s in workers.values() if s["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
        assert spot and any("InstanceMarketOptions" not in s["node_config"] for s in workers.values())
        # Ray's own group (intra-group + SSH) and no extra inbound rule
        assert provider["security_group"]["IpPermissions"] == []
        assert all("SecurityGroupIds" not in t["node_config"] for t in types.values())
    else:
        assert provider["type"] == "gcp"
        spot = [s for s in workers.values() if s["node_config"]["scheduling"].get("provisioningModel") == "SPOT"]
        assert spot and len(spot) < len(workers)
        for name, spec in types.items():  # the dedicated network whose firewall admits only internal + SSH
            nets = spec["node_config"]["networkInterfaces"]
            assert all(n["subnetwork"].endswith("/subnetworks/undial-ray") for n in nets), name
        text = path.read_text()
        assert "firewall-rules create undial-ray-internal" in text and "--allow=tcp:22" in text


@pytest.mark.parametrize("path", LAUNCHER_SPECS, ids=lambda p: p.name)
def test_launcher_token_auth_in_every_start_command(path):
    cfg = yaml.safe_load(path.read_text())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in cfg[key] if "ray start" in c]
        assert starts, key
        for command in starts:
            assert "RAY_AUTH_MODE=token" in command and "RAY_AUTH_TOKEN_PATH=" in command, command
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+?);", head).group(1)
    assert token_path in cfg["file_mounts"]


def _every_text_file():
    files = [p for p in CLUSTERS.rglob("*") if p.is_file()]
    doc = REPO / "docs" / "cluster.md"
    return files + ([doc] if doc.is_file() else [])


def test_nothing_listens_on_every_interface():
    """No spec, manifest or doc binds the dashboard, the job API or MLflow to 0.0.0.0; a
    dashboard host is the loopback, or (a RayJob, polled by the operator) the pod's own IP."""
    allowed = {"127.0.0.1", "$(POD_IP)"}
    files = _every_text_file()
    assert len(files) >= 6
    for path in files:
        text = path.read_text()
        assert "0.0.0.0" not in text, path
        assert "::/0" not in text, path
        for value in re.findall(r"dashboard[-_]host[=:\s\"']+(\$\(\w+\)|[^\s\"'`,;)}]+)", text):
            assert value.strip("\"'") in allowed, (path, value)
        for value in re.findall(r"mlflow server[^\n]*--host[= ]([^\s`)]+)", text):
            assert value == "127.0.0.1", (path, value)


@pytest.fixture(scope="module")
def kuberay_schemas():
    if not SCHEMAS.is_dir():
        pytest.skip(f"{SCHEMAS} is absent: the KubeRay CRD schemas (../shared/kuberay) come with the shared folder")
    return {"RayCluster": json.loads((SCHEMAS / "raycluster_v1.schema.json").read_text()),
            "RayJob": json.loads((SCHEMAS / "rayjob_v1.schema.json").read_text())}


def _ray_cluster_specs():
    for path in KUBERAY:
        for doc in _docs(path):
            if doc["kind"] == "RayCluster":
                yield path.name, doc["spec"]
            elif doc["kind"] == "RayJob":
                yield path.name, doc["spec"]["rayClusterSpec"]


def test_kuberay_manifests_validate(kuberay_schemas):
    import jsonschema

    kinds = []
    for path in KUBERAY:
        for doc in _docs(path):
            kinds.append(doc["kind"])
            if doc["kind"] in kuberay_schemas:
                jsonschema.Draft7Validator(kuberay_schemas[doc["kind"]]).validate(doc)
            else:
                assert doc["apiVersion"] == "networking.k8s.io/v1" and doc["kind"] == "NetworkPolicy"
    assert sorted(kinds) == ["NetworkPolicy", "RayCluster", "RayJob"]
    # a misspelt field is refused (the schemas are strict)
    bad = _docs(CLUSTERS / "kuberay" / "raycluster.yaml")[0]
    bad["spec"]["enableInTreeAutoscaler"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(kuberay_schemas["RayCluster"]).validate(bad)


def _env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def test_kuberay_clusters_cpu_head_gpu_workers_token_auth():
    specs = list(_ray_cluster_specs())
    assert len(specs) == 2
    for name, spec in specs:
        assert spec["enableInTreeAutoscaling"] is True, name
        head = spec["headGroupSpec"]
        assert head["rayStartParams"]["num-cpus"] == "0", name
        host = head["rayStartParams"]["dashboard-host"]
        head_container = head["template"]["spec"]["containers"][0]
        if host == "$(POD_IP)":
            assert _env(head_container)["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
        else:
            assert host == "127.0.0.1", name
        assert IMAGE.match(head_container["image"]), name
        groups = spec["workerGroupSpecs"]
        assert len(groups) >= 2
        for group in groups:
            assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
            pod = group["template"]["spec"]
            res = pod["containers"][0]["resources"]
            assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == "8"
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        # token auth: the operator's authOptions, or RAY_AUTH_MODE=token + the token from a Secret everywhere
        auth = spec.get("authOptions", {})
        if auth.get("mode") == "token":
            assert auth.get("secretName")
        else:
            containers = [head_container] + [g["template"]["spec"]["containers"][0] for g in groups]
            envs = [_env(c) for c in containers] + [{e["name"]: e for e in spec["autoscalerOptions"]["env"]}]
            for env in envs:
                assert env["RAY_AUTH_MODE"]["value"] == "token"
                assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]


def test_rayjob_runs_a_sweep_of_the_repo():
    job = _docs(CLUSTERS / "kuberay" / "rayjob.yaml")[0]["spec"]
    words = job["entrypoint"].split()
    assert words[:2] == ["undial", "sweep"] and (REPO / words[2]).is_file() and "--output" in words
    env = yaml.safe_load(job["runtimeEnvYAML"])
    assert env["working_dir"] and any(p.startswith("undial-orchestrator @ ") for p in env["pip"])
    assert job["shutdownAfterJobFinishes"] is True


def test_networkpolicy_admits_only_the_clusters_own_pods():
    policy = _docs(CLUSTERS / "kuberay" / "networkpolicy.yaml")[0]
    label = policy["spec"]["podSelector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for _, spec in _ray_cluster_specs():  # every Ray pod carries the label the policy selects
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for template in templates:
            assert label.items() <= template["metadata"]["labels"].items()
    rules = policy["spec"]["ingress"]
    assert {"podSelector": {"matchLabels": label}} in rules[0]["from"] and "ports" not in rules[0]
    for rule in rules[1:]:  # the operator, to the job API only
        assert [p["port"] for p in rule["ports"]] == [8265]
    for rule in rules:
        assert all("ipBlock" not in peer for peer in rule["from"])
