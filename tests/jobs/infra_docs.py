"""The deployment files under infra/ as the infra tests read them: every Kubernetes object, every
RayJob spec wherever it lives (RayJob, RayCronJob job template, a RayJob kept in a ConfigMap) with
the labels its RayJob objects really carry, every Ray cluster spec and every pod spec."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
KUBERAY = INFRA / "kuberay"
DOCKER = INFRA / "docker"
SPECS = REPO / "jobs" / "specs"
IMAGE_SPECS = "/opt/facefab/jobs/specs/"  # where the images put jobs/specs
CRONJOB_NAME_LABEL = "ray.io/cronjob-name"  # the only label KubeRay puts on the RayJobs a RayCronJob creates


def docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_docs() -> list[tuple[str, dict]]:
    return [(f"{p.name}:{d.get('kind')}", d) for p in sorted(KUBERAY.glob("*.yaml")) for d in docs(p)]


def declared_minimum(path: Path) -> str:
    """The KubeRay release a manifest says it needs: its first line, `# KubeRay >= 1.6 ...`."""
    match = re.match(r"# KubeRay >= (\d+\.\d+)\b", path.read_text())
    assert match, f"{path.name}: the first line must say `# KubeRay >= X.Y`"
    return match.group(1)


def ray_objects(path: Path) -> list[tuple[str, dict]]:
    """Every ray.io object a file creates, RayJobs kept in ConfigMaps included."""
    out = []
    for doc in docs(path):
        if str(doc.get("apiVersion", "")).startswith("ray.io/"):
            out.append((f"{path.name}:{doc['kind']}", doc))
        elif doc.get("kind") == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                for inner in yaml.safe_load_all(text) if key.endswith((".yaml", ".yml")) else []:
                    if isinstance(inner, dict) and str(inner.get("apiVersion", "")).startswith("ray.io/"):
                        out.append((f"{path.name}:ConfigMap.data.{key}", inner))
    return out


@dataclass(frozen=True)
class RayJobSpec:
    where: str
    file: str
    labels: dict  # the labels the RayJob objects in the cluster carry
    spec: dict


def rayjob_specs() -> list[RayJobSpec]:
    """Every RayJob spec: RayJobs, RayCronJob job templates, RayJobs kept in ConfigMaps."""
    out = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for where, obj in ray_objects(path):
            if obj["kind"] == "RayJob":
                out.append(RayJobSpec(where, path.name, obj["metadata"].get("labels", {}), obj["spec"]))
            elif obj["kind"] == "RayCronJob":
                out.append(RayJobSpec(where + ".jobTemplate", path.name,
                                      {CRONJOB_NAME_LABEL: obj["metadata"]["name"]}, obj["spec"]["jobTemplate"]))
    return out


def cluster_specs() -> list[tuple[str, dict]]:
    out = [(where, doc["spec"]) for where, doc in k8s_docs() if doc.get("kind") == "RayCluster"]
    out += [(job.where, job.spec["rayClusterSpec"]) for job in rayjob_specs() if "rayClusterSpec" in job.spec]
    return out


def groups(cluster: dict) -> list[tuple[str, dict]]:
    """(name, group) of the head ("head") and every worker group."""
    return [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]


def ray_container(group: dict) -> dict:
    (container,) = [c for c in group["template"]["spec"]["containers"] if c["name"].startswith("ray-")]
    return container


def gpus_per_node(group: dict) -> float:
    return float(group["rayStartParams"].get("num-gpus", 0))


def pod_specs(obj, where: str):
    """Every pod spec (a mapping with `containers`) inside obj, with its path."""
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            yield where, obj
        for key, value in obj.items():
            yield from pod_specs(value, f"{where}.{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from pod_specs(value, f"{where}[{i}]")


def all_pod_specs():
    for where, doc in k8s_docs():
        yield from pod_specs(doc, where)
    for job in rayjob_specs():
        if ".data." in job.where:  # RayJobs inside ConfigMaps are not reached by the walk above
            yield from pod_specs(job.spec, job.where)


_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity_bytes(text) -> int:
    """A Kubernetes memory quantity ("9Gi", "512Mi", "1000") in bytes."""
    match = re.fullmatch(r"(\d+)([KMGT]i|[kMG])?", str(text))
    assert match, f"unsupported quantity {text!r}"
    return int(match.group(1)) * _UNITS.get(match.group(2) or "", 1)
