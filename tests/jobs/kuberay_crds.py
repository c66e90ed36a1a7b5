"""The KubeRay CRDs vendored under infra/crds/kuberay/ as JSON Schemas that reject unknown fields.

A CRD's openAPIV3Schema is a structural OpenAPI schema: the API server prunes fields it does not
list, and with strict field validation (kubectl's default since 1.27) it rejects them. JSON Schema
allows them unless an object says `additionalProperties: false`, so `strict` adds that to every object
schema that lists properties and does not keep unknown fields (x-kubernetes-preserve-unknown-fields).
CEL rules (x-kubernetes-validations) and the operator's own checks are not evaluated here; the
infra tests check the ones facefab's manifests rely on by hand.
"""

from __future__ import annotations

import functools
import json
import lzma
import re
from pathlib import Path

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parents[2] / "infra" / "crds" / "kuberay"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
KIND_FILES = {"RayCluster": "ray.io_rayclusters.yaml.xz", "RayJob": "ray.io_rayjobs.yaml.xz",
              "RayCronJob": "ray.io_raycronjobs.yaml.xz"}


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def versions() -> list[str]:
    """The vendored KubeRay releases, oldest first (folder names: v1.0.0, ...)."""
    return sorted((p.name for p in CRDS.iterdir() if p.is_dir()), key=version_key)


def feature_gates() -> dict[str, dict[str, bool]]:
    """Per release, the operator's feature gates and their defaults (from its features.go)."""
    return json.loads((CRDS / "feature-gates.json").read_text())


def strict(schema):
    """An OpenAPI v3 CRD schema as a JSON Schema in which unlisted fields are errors."""
    if not isinstance(schema, dict):
        return schema
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(schema["additionalProperties"])
    if "items" in schema:
        out["items"] = strict(schema["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [strict(sub) for sub in schema[key]]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@functools.cache
def validator(version: str, kind: str) -> jsonschema.Draft4Validator | None:
    """The strict validator of `kind` (apiVersion ray.io/v1) in KubeRay `version`; None when that
    release has no such CRD (RayCronJob before 1.6)."""
    path = CRDS / version / KIND_FILES[kind]
    if not path.exists():
        return None
    crd = yaml.load(lzma.decompress(path.read_bytes()), Loader=_LOADER)  # about 1 MB of YAML each
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind, path
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft4Validator(strict(v1["schema"]["openAPIV3Schema"]))


def errors(doc: dict, version: str) -> list[str]:
    """What the API server of a cluster with KubeRay `version`'s CRDs would reject in `doc`."""
    if doc.get("apiVersion") != "ray.io/v1":
        return [f"apiVersion {doc.get('apiVersion')!r}: KubeRay serves ray.io/v1"]
    check = validator(version, doc["kind"])
    if check is None:
        return [f"KubeRay {version} has no {doc['kind']} CRD"]
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in check.iter_errors(doc)]
