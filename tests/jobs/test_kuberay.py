"""What the KubeRay manifests in infra/kuberay/ mean, checked against the real KubeRay CRDs (vendored
in infra/crds/kuberay/) and against the plans of the jobs they run:

- every ray.io object is valid (unknown fields are errors) for every KubeRay release from the one
  its file declares on, and invalid for the release before it, so the declared minimum is the real one;
- worker groups start at their minimum, and only groups a growing actor pool can use may grow;
  a GPU group only where a stage of the job uses GPUs;
- the object store fits in /dev/shm on every Ray pod, heads included;
- jobs give up waiting for a cluster (preRunningDeadlineSeconds, or the fallback's own wait);
- the RayCronJob's clean-up rules, schedule overlap and feature gate; the labels the README's
  selectors use are the labels KubeRay puts on the RayJobs;
- images carry immutable tags set when deploying.
There is no Kubernetes here: nothing is applied to a cluster (see infra/README.md, "What is tested").
"""

from __future__ import annotations

import copy
import hashlib
import json
import lzma
import os
import re
import subprocess
from pathlib import Path

import kuberay_crds
import pytest
import yaml
from infra_docs import (
    CRONJOB_NAME_LABEL,
    INFRA,
    KUBERAY,
    REPO,
    SPECS,
    cluster_specs,
    declared_minimum,
    docs,
    gpus_per_node,
    groups,
    k8s_docs,
    quantity_bytes,
    ray_container,
    ray_objects,
    rayjob_specs,
)

ENV = {"FACEFAB_BUCKET": "test-bucket"}
IMAGE = re.compile(r"^registry\.example\.com/facefab/facefab:TAG-(cpu|cuda)$")


@pytest.fixture
def spec_env(monkeypatch):
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("FACEFAB_DATASET", "FACEFAB_DUB_BATCH", "FACEFAB_CATALOG", "FACEFAB_CHECKPOINT_MYTALK", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)


def _manifests() -> list[Path]:
    return [p for p in sorted(KUBERAY.glob("*.yaml")) if ray_objects(p)]


def _job_plan(job):
    """(spec, placement, StagePlans) of the job a RayJob entrypoint runs, planned for a cluster."""
    from facefab.jobs.commands.run import job_plan
    from facefab.jobs.spec import load_spec

    path = job.spec["entrypoint"].split()[-1]
    spec = load_spec(SPECS / Path(path).name)
    return (spec, *job_plan(spec, cluster=True))


# -- the CRDs ------------------------------------------------------------------------------------


def test_vendored_crds_are_the_upstream_files():
    sums = dict(line.split()[::-1] for line in (kuberay_crds.CRDS / "SHA256SUMS").read_text().splitlines())
    vendored = sorted(p.relative_to(kuberay_crds.CRDS).as_posix()[:-3] for p in kuberay_crds.CRDS.rglob("*.yaml.xz"))
    assert vendored == sorted(sums), "every vendored CRD has its upstream checksum, and only those"
    for name in vendored:
        digest = hashlib.sha256(lzma.decompress((kuberay_crds.CRDS / f"{name}.xz").read_bytes())).hexdigest()
        assert digest == sums[name], name
    assert "Apache License" in (kuberay_crds.CRDS / "LICENSE").read_text()[:200]
    versions = kuberay_crds.versions()
    assert versions[0] == "v1.0.0" and versions[-1] == "v1.7.0"
    assert [v for v in versions if kuberay_crds.validator(v, "RayCronJob")] == ["v1.6.2", "v1.7.0"]


def test_the_crd_check_rejects_unknown_fields_and_wrong_types():
    (_, job), = ray_objects(KUBERAY / "rayjob-preprocess.yaml")
    assert kuberay_crds.errors(job, "v1.7.0") == []
    typo = copy.deepcopy(job)
    typo["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 8
    assert any("'maxReplica' was unexpected" in e for e in kuberay_crds.errors(typo, "v1.7.0"))
    number = copy.deepcopy(job)
    number["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    assert any("num-cpus" in e and "string" in e for e in kuberay_crds.errors(number, "v1.7.0"))
    pod = copy.deepcopy(job)
    pod["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["imagePullPolicy"] = "Always"  # a real field
    assert kuberay_crds.errors(pod, "v1.7.0") == []


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_manifest_is_valid_from_the_kuberay_release_it_declares(path):
    minimum = declared_minimum(path)
    versions = kuberay_crds.versions()
    newer = [v for v in versions if kuberay_crds.version_key(v)[:2] >= kuberay_crds.version_key(minimum)]
    older = [v for v in versions if v not in newer]
    assert newer, f"{path.name}: no vendored KubeRay release from {minimum}"
    for version in newer:
        problems = [f"{where}: {e}" for where, obj in ray_objects(path) for e in kuberay_crds.errors(obj, version)]
        assert not problems, f"{path.name} on KubeRay {version}:\n" + "\n".join(problems)
    if older:  # the declared minimum is the real one: the release before it rejects the file
        assert any(kuberay_crds.errors(obj, older[-1]) for _, obj in ray_objects(path)), (
            f"{path.name} also works on KubeRay {older[-1]}: lower its `# KubeRay >=` line")
    readme = (INFRA / "README.md").read_text()
    assert re.search(rf"`kuberay/{re.escape(path.name)}`[^\n]*KubeRay >= {re.escape(minimum)}\b", readme), (
        f"infra/README.md must give {path.name}'s minimum KubeRay release ({minimum})")


# -- sizes: what the groups start with and grow to, against what the jobs ask for ----------------


def test_gpu_groups_exactly_where_a_stage_uses_gpus(spec_env):
    checked = 0
    for job in rayjob_specs():
        spec, _, stages = _job_plan(job)
        uses_gpus = any(stage.num_gpus > 0 for stage in stages)
        gpu_groups = [g for g in job.spec["rayClusterSpec"]["workerGroupSpecs"] if gpus_per_node(g)]
        assert uses_gpus == bool(gpu_groups), (
            f"{job.where}: {spec.source} {'uses' if uses_gpus else 'uses no'} GPUs, "
            f"its cluster has {len(gpu_groups)} GPU group(s)")
        checked += 1
    assert checked >= 7


def test_groups_grow_only_where_the_jobs_pools_can_use_them(spec_env):
    for job in rayjob_specs():
        spec, _, stages = _job_plan(job)
        growing = [s for s in stages if s.kind == "actors" and (s.max_actors is None or s.max_actors > s.min_actors)]
        for name, group in groups(job.spec["rayClusterSpec"])[1:]:
            if group["maxReplicas"] == group["minReplicas"]:
                continue
            if gpus_per_node(group):
                assert any(s.num_gpus for s in growing), f"{job.where}/{name}: no growing GPU pool uses this range"
            else:  # CPU nodes: growing actor pools, or Ray Data's sample building while a model trains
                assert growing or spec.kind == "train", f"{job.where}/{name}: no growing pool uses this range"


def test_preprocess_asks_for_its_workers_at_the_cpus_the_chain_declares(spec_env, capsys):
    """`workers: N` on a cluster that starts smaller: the plan --dry-run prints asks for up to N
    actors at the chain's declared 1 CPU each (not N shares of what the cluster has at start), and
    the RayJob's CPU group starts below that and can grow to hold it."""
    from facefab.jobs.cli import main

    spec = yaml.safe_load((SPECS / "preprocess.yaml").read_text())
    workers = spec["config"]["workers"]
    assert main(["run", str(SPECS / "preprocess.yaml"), "--dry-run", "--cluster"]) == 0
    (pool,) = [line for line in capsys.readouterr().out.splitlines() if "actor pool of" in line]
    assert pool.endswith(f"actor pool of 1..{workers}, 1 CPU each"), pool
    (job,) = [j for j in rayjob_specs() if j.file == "rayjob-preprocess.yaml"]
    (cpu,) = [g for _, g in groups(job.spec["rayClusterSpec"])[1:]]
    per_node = float(cpu["rayStartParams"]["num-cpus"])
    assert cpu["minReplicas"] * per_node < workers * 1.0 <= cpu["maxReplicas"] * per_node


# -- shared memory, deadlines, clean-up -----------------------------------------------------------


def test_the_object_store_fits_in_shared_memory_on_every_ray_pod():
    for where, cluster in cluster_specs():
        for name, group in groups(cluster):
            store = int(group["rayStartParams"].get("object-store-memory", 0))
            assert store, f"{where}/{name}: set object-store-memory (Ray's default can exceed /dev/shm)"
            pod = group["template"]["spec"]
            (mount,) = [m for m in ray_container(group).get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
            (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
            shm = volume["emptyDir"]
            assert shm.get("medium") == "Memory", f"{where}/{name}: /dev/shm must be memory-backed"
            # Ray puts the store in /dev/shm only when it has room for all of it (else /tmp, "This will harm
            # performance!"); the tmpfs also counts against the memory limit
            assert store < quantity_bytes(shm["sizeLimit"]), f"{where}/{name}: store {store} > /dev/shm"
            memory = quantity_bytes(ray_container(group)["resources"]["limits"]["memory"])
            assert store <= memory // 2, f"{where}/{name}: the store takes more than half the pod's memory"


def test_jobs_give_up_when_their_cluster_does_not_come():
    for job in rayjob_specs():
        active = job.spec["activeDeadlineSeconds"]
        if declared_minimum(KUBERAY / job.file) >= "1.6":
            before = job.spec.get("preRunningDeadlineSeconds")
            assert before and before < active, f"{job.where}: preRunningDeadlineSeconds must end the wait first"
        else:  # before KubeRay 1.6 the fallback's creator pod waits for Running and deletes the RayJob
            assert job.file == "cronjob-train-fallback.yaml", job.where
            script = _fallback_script()
            assert "deadline" in script and 'kubectl delete "$name"' in script


def test_raycronjob_runs_do_not_overlap_and_are_cleaned_up():
    (cron,) = [d for _, d in k8s_docs() if d.get("kind") == "RayCronJob"]
    minute, hour, day, month, weekday = cron["spec"]["schedule"].split()
    assert (day, month, weekday) == ("*", "*", "*") and minute.isdigit() and hour.isdigit(), "once a day"
    template = cron["spec"]["jobTemplate"]
    assert template["activeDeadlineSeconds"] < 24 * 3600, "a run must end before the next one starts"
    # deletion rules exclude shutdownAfterJobFinishes and the global TTL (KubeRay's RayJob validation)
    assert "shutdownAfterJobFinishes" not in template and "ttlSecondsAfterFinished" not in template
    rules = template["deletionStrategy"]["deletionRules"]
    ttl = {(json.dumps(r["condition"].get("jobStatus") or r["condition"]["jobDeploymentStatus"]), r["policy"]):
           r["condition"]["ttlSeconds"] for r in rules}
    for outcome in ('"SUCCEEDED"', '"FAILED"', '"Failed"'):  # every end a night can have, deadlines included
        cluster, rayjob = ttl[(outcome, "DeleteCluster")], ttl[(outcome, "DeleteSelf")]
        assert cluster <= rayjob, f"{outcome}: KubeRay requires DeleteCluster's TTL <= DeleteSelf's"
        assert rayjob >= 24 * 3600, f"{outcome}: keep a finished run's RayJob a day at least, for its logs"


def test_the_operator_install_turns_the_raycronjob_gate_on():
    values = yaml.safe_load((INFRA / "helm" / "kuberay-operator-values.yaml").read_text())
    gates = {g["name"]: g["enabled"] for g in values["featureGates"]}
    assert gates["RayCronJob"] is True and gates.get("RayJobDeletionPolicy", True) is True
    known = kuberay_crds.feature_gates()
    for version in ("v1.6.2", "v1.7.0"):  # an unknown gate stops the operator at start-up
        assert set(gates) <= set(known[version]), f"{sorted(set(gates) - set(known[version]))} unknown to {version}"
    install = (INFRA / "README.md").read_text()
    assert re.search(r"helm (upgrade --install|install) kuberay-operator [^\n]*--version 1\.[67]\.\d", install)
    assert "-f infra/helm/kuberay-operator-values.yaml" in install
    assert "RayCronJob feature gate is enabled" in install, "the README shows how to check the gate is on"


def test_selectors_match_the_labels_the_rayjobs_carry():
    """`kubectl get rayjobs -l ...` in the READMEs and manifests finds the RayJobs it means; RayJobs a
    RayCronJob creates carry only ray.io/cronjob-name (KubeRay's raycronjob controller)."""
    label_sets = [job.labels for job in rayjob_specs()]
    assert {CRONJOB_NAME_LABEL: "facefab-train-mytalk"} in label_sets
    texts = [REPO / "README.md", INFRA / "README.md", *sorted(KUBERAY.glob("*.yaml"))]
    found = 0
    for path in texts:
        for selector in re.findall(r"rayjobs? -l ([^\s\"$]\S*)|sel=(\S+)", path.read_text()):
            selector = next(s for s in selector if s).strip("'`")
            wanted = dict(pair.split("=", 1) for pair in selector.split(","))
            assert any(wanted.items() <= labels.items() for labels in label_sets), (
                f"{path.name}: selector {selector} matches no RayJob's labels")
            found += 1
    assert found >= 6


# -- images ----------------------------------------------------------------------------------------


def test_images_get_an_immutable_tag_when_deployed():
    readme = (INFRA / "README.md").read_text()
    assert re.search(r"TAG=\S*\$\(git rev-parse[^)]*\)", readme), "tags are derived from the commit"
    assert "docker build -f infra/docker/Dockerfile.cpu -t $REG:$TAG-cpu ." in readme
    render = 's#registry.example.com/facefab/facefab:TAG#$REG:$TAG#'
    assert render in readme, "the README renders the manifests with the tag"
    images = [(path.name, image) for path in sorted(KUBERAY.glob("*.yaml"))
              for image in re.findall(r"^\s*image: (\S+)", path.read_text(), re.MULTILINE)]  # ConfigMap text included
    assert len(images) >= 30
    for where, image in images:
        if "facefab" in image:
            assert IMAGE.match(image), f"{where}: {image} must be the TAG placeholder the deploy sed replaces"


# -- the fallback CronJob's creator script, run with a stand-in kubectl --------------------------------


def _fallback_script() -> str:
    (cronjob,) = [d for d in docs(KUBERAY / "cronjob-train-fallback.yaml") if d["kind"] == "CronJob"]
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container["args"][0]


FAKE_KUBECTL = r"""#!/bin/sh
# records every call; answers `get rayjobs -l` from $FAKE/rayjobs and `get <name>` from $FAKE/state
echo "$*" >> "$FAKE/calls"
case "$1 $2" in
  "get rayjobs") cat "$FAKE/rayjobs" ;;
  "create -f") echo "rayjob.ray.io/facefab-train-mytalk-new" ;;
  "get rayjob.ray.io/facefab-train-mytalk-new") cat "$FAKE/state" ;;
esac
"""
FAKE_DATE = r"""#!/bin/sh
# every call is 20 minutes later than the one before
n=$(cat "$FAKE/clock" 2>/dev/null || echo 0); echo $((n + 1200)) > "$FAKE/clock"; echo $((1700000000 + n))
"""


def _run_creator(tmp_path: Path, rayjobs: str, state: str) -> tuple[int, list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("kubectl", FAKE_KUBECTL), ("date", FAKE_DATE), ("sleep", "#!/bin/sh\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "rayjobs").write_text(rayjobs)
    (tmp_path / "state").write_text(state)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE": str(tmp_path)}
    done = subprocess.run(["sh", "-c", _fallback_script()], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    return done.returncode, (tmp_path / "calls").read_text().splitlines()


def test_fallback_keeps_three_finished_runs_and_creates_the_next(tmp_path):
    history = "".join(f"run-{i} {s}\n" for i, s in enumerate(["Complete", "Failed", "Complete", "Complete", "Failed"]))
    code, calls = _run_creator(tmp_path, history, "Running")
    assert code == 0
    assert "delete rayjob run-0 run-1" in calls  # the two oldest finished ones
    assert any(c.startswith("create -f /etc/facefab/rayjob.yaml") for c in calls)


@pytest.mark.parametrize("active", ["Running", "Initializing", ""])  # "": just created, no status yet
def test_fallback_skips_a_night_while_a_run_is_active(tmp_path, active):
    code, calls = _run_creator(tmp_path, f"run-0 Complete\nrun-1 {active}\n", "Running")
    assert code == 0 and not any(c.startswith("create") for c in calls)


def test_fallback_deletes_a_run_whose_cluster_never_comes(tmp_path):
    code, calls = _run_creator(tmp_path, "", "Initializing")
    assert code == 1
    assert calls[-1] == "delete rayjob.ray.io/facefab-train-mytalk-new"
