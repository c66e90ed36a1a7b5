"""Job specs (jobs/specs/, `facefab run`) and the deployment files (infra/): they parse, every
RayJob / RayCronJob / CronJob-created RayJob entrypoint is a real `facefab` command line, every
container has an image and resources, S3 settings come from the `facefab-s3` secret, and the
container files install what the Makefile installs. What the KubeRay manifests mean (CRD schemas,
replica ranges against the job's plan, shared memory, deadlines, clean-up, labels): test_kuberay.py."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from infra_docs import (
    DOCKER,
    IMAGE_SPECS,
    INFRA,
    KUBERAY,
    REPO,
    SPECS,
    all_pod_specs,
    cluster_specs,
    docs,
    gpus_per_node,
    groups,
    k8s_docs,
    ray_container,
    rayjob_specs,
)

from facefab.jobs.spec import CONFIG_PLACEHOLDER, load_spec, materialized_argv, parse_spec, spec_to_argv

SECRET = "facefab-s3"
S3_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FACEFAB_S3_ENDPOINT", "FACEFAB_BUCKET"}
ENV = {"FACEFAB_BUCKET": "test-bucket"}


@pytest.fixture
def cli(monkeypatch):
    """facefab.jobs.cli with the environment the specs expand."""
    from facefab.jobs import cli as cli_module

    assert "run" in cli_module.COMMANDS
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("FACEFAB_DATASET", "FACEFAB_CATALOG", "FACEFAB_DUB_BATCH", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    return cli_module


def _parse(parser, argv: list[str], where: str):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `facefab {shlex.join(argv)}` is not a valid facefab command:\n{err.getvalue()}")


def _check_entrypoint(cli, entrypoint: str, where: str) -> tuple[str, object]:
    """Parse an entrypoint with the real CLI parser; `facefab run X.yaml` also parses X's argv.
    Returns (job kind / command, spec or None)."""
    argv = shlex.split(entrypoint)
    assert argv and argv[0] == "facefab", f"{where}: entrypoint must start with `facefab`: {entrypoint!r}"
    parser = cli.build_parser()
    args = _parse(parser, argv[1:], where)
    assert args.command, f"{where}: no facefab command in {entrypoint!r}"
    if args.command != "run":
        return args.command, None
    assert args.spec.startswith(IMAGE_SPECS), f"{where}: spec {args.spec} is not under {IMAGE_SPECS} (the image's copy)"
    local = SPECS / args.spec[len(IMAGE_SPECS):]
    assert local.is_file(), f"{where}: {args.spec} has no jobs/specs/ counterpart"
    spec = load_spec(local)
    inner = _parse(parser, spec_to_argv(spec), f"{where} -> {local.name}")
    assert inner.command == spec.kind
    return spec.kind, spec


# --------------------------------------------------------------------------------------------
# everything parses


def test_every_yaml_parses():
    files = sorted(INFRA.rglob("*.y*ml")) + sorted(SPECS.glob("*.y*ml"))
    names = {f.relative_to(REPO).as_posix() for f in files}
    for required in ("infra/kuberay/raycluster.yaml", "infra/kuberay/rayjob-preprocess.yaml",
                     "infra/kuberay/rayjob-dub.yaml", "infra/kuberay/rayjob-dub-mytalk.yaml",
                     "infra/kuberay/rayjob-train.yaml", "infra/kuberay/rayjob-train-mytalk-motion.yaml",
                     "infra/kuberay/raycronjob-train.yaml", "infra/kuberay/cronjob-train-fallback.yaml",
                     "infra/kuberay/secret-s3.example.yaml", "infra/helm/kuberay-operator-values.yaml",
                     "infra/local/docker-compose.yaml", "jobs/specs/preprocess.yaml", "jobs/specs/dub.yaml",
                     "jobs/specs/dub_mytalk.yaml", "jobs/specs/train_mytalk.yaml",
                     "jobs/specs/train_mytalk_motion.yaml", "jobs/specs/train_facevid2vid.yaml",
                     "jobs/specs/local_preprocess.yaml"):
        assert required in names, f"missing {required}"
    for f in files:
        loaded = docs(f)
        assert loaded and all(isinstance(d, dict) for d in loaded), f"{f}: expected YAML mappings"
    for where, doc in k8s_docs():
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata"), f"{where}: not a Kubernetes object"
    for job in rayjob_specs():  # embedded YAML (runtimeEnvYAML) parses too
        if "runtimeEnvYAML" in job.spec:
            assert isinstance(yaml.safe_load(job.spec["runtimeEnvYAML"]), dict), job.where


# --------------------------------------------------------------------------------------------
# entrypoints


def test_every_rayjob_entrypoint_is_a_real_facefab_command(cli):
    jobs = rayjob_specs()
    wheres = " ".join(job.where for job in jobs)
    assert "RayCronJob.jobTemplate" in wheres and "ConfigMap.data." in wheres
    kinds = set()
    for job in jobs:
        spec, where = job.spec, job.where
        assert spec.get("entrypoint"), f"{where}: no entrypoint"
        kind, _ = _check_entrypoint(cli, spec["entrypoint"], where)
        kinds.add(kind)
        assert "rayClusterSpec" in spec or "clusterSelector" in spec, where
        if "rayClusterSpec" in spec:  # the job's cluster must go away: with the job, or by a deletion rule
            rules = (spec.get("deletionStrategy") or {}).get("deletionRules", [])
            deletes_cluster = any(rule["policy"] == "DeleteCluster" for rule in rules)
            assert spec.get("shutdownAfterJobFinishes") is True or deletes_cluster, where
    assert kinds >= {"preprocess", "dub", "train"}, kinds


def test_entrypoint_check_rejects_non_commands(cli):
    with pytest.raises(pytest.fail.Exception, match="is not a valid facefab command"):
        _check_entrypoint(cli, "facefab preprocess --out x", "test")  # INPUT missing
    with pytest.raises(pytest.fail.Exception, match="is not a valid facefab command"):
        _check_entrypoint(cli, "facefab transcode x", "test")
    with pytest.raises(AssertionError, match="must start with `facefab`"):
        _check_entrypoint(cli, "python -m facefab.jobs.cli status x", "test")
    with pytest.raises(AssertionError, match="no jobs/specs/ counterpart"):
        _check_entrypoint(cli, f"facefab run {IMAGE_SPECS}nope.yaml", "test")


def test_training_jobs_have_their_gpus_at_start(cli):
    """Ray Train starts all workers x gpus_per_worker at once: the job's GPU group holds them from
    the start (minReplicas), at a fixed size."""
    checked = 0
    for job in rayjob_specs():
        kind, spec = _check_entrypoint(cli, job.spec["entrypoint"], job.where)
        if kind != "train":
            continue
        need = spec.options.get("workers", 1) * spec.options.get("gpus_per_worker", 0)
        gpu_groups = [g for g in job.spec["rayClusterSpec"]["workerGroupSpecs"] if gpus_per_node(g)]
        have = sum(g["minReplicas"] * gpus_per_node(g) for g in gpu_groups)
        assert 0 < need <= have, f"{job.where}: {spec.source} needs {need} GPUs at start, the cluster has {have}"
        assert all(g["minReplicas"] == g["maxReplicas"] for g in gpu_groups), f"{job.where}: fixed size"
        checked += 1
    assert checked >= 4  # facevid2vid, mytalk-motion, the RayCronJob and the fallback CronJob's RayJob


def test_raycronjob_and_fallback_cronjob():
    (cron,) = [d for _, d in k8s_docs() if d.get("kind") == "RayCronJob"]
    assert cron["apiVersion"] == "ray.io/v1"
    assert len(cron["spec"]["schedule"].split()) == 5
    template = cron["spec"]["jobTemplate"]  # a RayJob spec itself (KubeRay >= 1.6), not {spec: ...}
    assert "entrypoint" in template and "rayClusterSpec" in template and "spec" not in template

    by_kind = {d["kind"]: d for d in docs(KUBERAY / "cronjob-train-fallback.yaml")}
    cronjob = by_kind["CronJob"]
    assert cronjob["apiVersion"] == "batch/v1" and len(cronjob["spec"]["schedule"].split()) == 5
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == by_kind["ServiceAccount"]["metadata"]["name"]
    rules = by_kind["Role"]["rules"]
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"] for r in rules)
    binding = by_kind["RoleBinding"]
    assert binding["roleRef"]["name"] == by_kind["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == by_kind["ServiceAccount"]["metadata"]["name"]
    (container,) = pod["containers"]
    script = " ".join(container.get("command", []) + container.get("args", []))
    (mount,) = container["volumeMounts"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    configmap = by_kind["ConfigMap"]
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    created = re.findall(r"kubectl create -f (\S+)", script)
    assert created, "the CronJob must `kubectl create` the RayJob"
    for path in created:
        assert path.startswith(mount["mountPath"] + "/") and path.rsplit("/", 1)[1] in configmap["data"]
    rayjob = yaml.safe_load(configmap["data"][created[0].rsplit("/", 1)[1]])
    assert rayjob["kind"] == "RayJob" and rayjob["metadata"].get("generateName"), "one RayJob per run"


# --------------------------------------------------------------------------------------------
# containers, resources, images, secrets


def test_every_container_has_image_and_resources():
    pods = list(all_pod_specs())
    assert len(pods) >= 15
    for where, pod in pods:
        for c in pod["containers"] + pod.get("initContainers", []):
            name = f"{where}/{c.get('name')}"
            image = c.get("image", "")
            assert image and ":" in image.rsplit("/", 1)[-1], f"{name}: image with a tag required"
            assert not image.endswith(":latest"), f"{name}: pin the image"
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for key in ("cpu", "memory"):
                    assert (res.get(part) or {}).get(key), f"{name}: resources.{part}.{key} missing"


def test_ray_clusters_autoscale_and_size_ray_from_limits():
    import ray

    clusters = cluster_specs()
    assert len(clusters) >= 8  # RayCluster, 5 RayJobs, RayCronJob, fallback
    for where, spec in clusters:
        assert spec["rayVersion"] == ray.__version__, f"{where}: rayVersion != installed Ray"
        assert spec.get("enableInTreeAutoscaling") is True, where
        auto = spec["autoscalerOptions"]["resources"]
        assert auto["requests"]["cpu"] and auto["limits"]["memory"], where
        head = spec["headGroupSpec"]
        assert head["rayStartParams"].get("num-cpus") == "0", f"{where}: the head runs drivers, not tasks"
        for name, group in groups(spec):
            if name != "head":  # a group starts at its minimum; more only when the autoscaler adds them
                assert 0 <= group["minReplicas"] == group.get("replicas", 0) <= group["maxReplicas"], (where, name)
            container = ray_container(group)
            limits = container["resources"]["limits"]
            params = group["rayStartParams"]
            if name != "head" and "num-cpus" in params:
                assert params["num-cpus"] == str(limits["cpu"]), f"{where}/{name}: num-cpus != cpu limit"
            gpus = limits.get("nvidia.com/gpu")
            assert params.get("num-gpus") == (str(gpus) if gpus else None), f"{where}/{name}: num-gpus != GPU limit"
            if gpus:
                assert container["resources"]["requests"].get("nvidia.com/gpu") == gpus
                assert container["image"].endswith("-cuda"), f"{where}/{name}: GPU group needs the CUDA image"
            else:
                assert container["image"].endswith("-cpu"), f"{where}/{name}: CPU group uses the CPU image"
    (main,) = [s for w, s in clusters if w.startswith("raycluster.yaml")]
    gpu_groups = [g for g in main["workerGroupSpecs"]
                  if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    cpu_groups = [g for g in main["workerGroupSpecs"] if g not in gpu_groups]
    assert gpu_groups and cpu_groups, "raycluster.yaml needs a CPU and a GPU worker group"


def test_s3_settings_come_from_the_secret():
    for where, spec in cluster_specs():
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            for c in group["template"]["spec"]["containers"]:
                refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
                assert SECRET in refs, f"{where}/{c['name']}: envFrom secretRef {SECRET} missing"
    for where, pod in all_pod_specs():
        for c in pod["containers"]:
            for env in c.get("env", []):
                if env["name"] in S3_KEYS:
                    assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (
                        f"{where}/{c['name']}: {env['name']} must come from a secret")
    (secret,) = docs(KUBERAY / "secret-s3.example.yaml")
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == SECRET
    assert S3_KEYS <= set(secret["stringData"])
    # RayJob runtime envs carry no credentials either
    for job in rayjob_specs():
        env_vars = (yaml.safe_load(job.spec.get("runtimeEnvYAML") or "{}") or {}).get("env_vars", {})
        assert not (set(env_vars) & S3_KEYS), f"{job.where}: S3 settings belong in the secret"


def _makefile_no_deps() -> list[str]:
    text = (REPO / "Makefile").read_text()
    (line,) = [ln for ln in text.splitlines() if "--no-deps" in ln]
    return re.findall(r'"([^"]+)"', line.split("--no-deps", 1)[1])


def _torch_pin() -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.replace(" ", "").startswith("torch==")]
    return pin.replace(" ", "")


@pytest.mark.parametrize("name, index", [("Dockerfile.cpu", "download.pytorch.org/whl/cpu"),
                                         ("Dockerfile.cuda", "download.pytorch.org/whl/cu128")])
def test_dockerfiles_install_like_the_makefile(name, index):
    import ray

    text = (DOCKER / name).read_text()
    logical = re.sub(r"\\\n", " ", text)  # join continued lines
    runs = [ln for ln in logical.splitlines() if ln.startswith("RUN ")]
    assert _torch_pin() == "torch==2.13.0"
    torch_lines = [ln for ln in runs if _torch_pin() in ln]
    assert torch_lines and index in torch_lines[0], f"{name}: torch must come from {index}"
    assert any(re.search(r"pip install\b[^&]*\s\.(\s|$)", ln) for ln in runs), f"{name}: no `pip install .`"
    no_deps = [ln for ln in runs if "--no-deps" in ln]
    packages = _makefile_no_deps()
    assert packages == ["mediapipe==0.10.21"]
    copied = set(re.findall(r"^COPY \S+ (\w+) /tmp/facefab/\1$", text, re.MULTILINE))
    mapped = set(re.findall(r'^"facefab\.\w+" = "(\w+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE))
    assert mapped and copied == mapped, f"{name}: copies {sorted(copied)}, pyproject maps {sorted(mapped)}"
    for pkg in packages:
        assert any(pkg in ln.split("--no-deps", 1)[1] for ln in no_deps), f"{name}: --no-deps {pkg} missing"
    (base,) = re.findall(r"^ARG RAY_IMAGE=(\S+)", text, re.MULTILINE)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-py311"), base
    assert ("-gpu" in base) == (name == "Dockerfile.cuda")
    assert re.search(r"^COPY .*jobs/specs /opt/facefab/jobs/specs$", text, re.MULTILINE), f"{name}: specs not copied"
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), f"{name}: must run as a non-root user"
    assert "ffmpeg" not in " ".join(runs).lower(), "PyAV wheels bundle FFmpeg; install no system ffmpeg"
    for src in re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, re.MULTILINE):
        assert (REPO / src).exists(), f"{name}: COPY source {src} missing (build context is the repo root)"


def _compose_bytes(text: str) -> int:
    """A compose size ("2gb", "512m") in bytes; Docker's units are binary."""
    number, unit = re.fullmatch(r"(\d+)\s*([kmg]?)b?", text.lower()).groups()
    return int(number) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]


def test_local_stack():
    compose = docs(INFRA / "local" / "docker-compose.yaml")[0]
    services = compose["services"]
    assert "127.0.0.1:9000:9000" in services["minio"]["ports"]
    init = [s for s in services.values() if "mc mb" in " ".join(map(str, s.get("command", [])))]
    assert init, "a container must create the bucket"
    head = services["ray-head"]
    assert {"127.0.0.1:8265:8265", "127.0.0.1:10001:10001"} <= set(head["ports"])
    for name, service in services.items():  # nothing reachable from the network: the job API runs code
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is published on every interface"
    assert (INFRA / "local" / head["build"]["context"] / head["build"]["dockerfile"]).resolve().is_file()
    assert head["build"]["dockerfile"].endswith("Dockerfile.cpu")
    env = head["environment"]
    assert env["FACEFAB_S3_ENDPOINT"] == "http://minio:9000" and S3_KEYS <= set(env)
    # Ray token authentication, with the token from the environment and no default: compose refuses
    # to start without one (${VAR:?message})
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")
    command = head["command"]
    assert "ray start --head" in command and "--ray-client-server-port=10001" in command
    store = int(re.search(r"--object-store-memory=(\d+)", command).group(1))
    assert store < _compose_bytes(head["shm_size"]), "the object store must fit in /dev/shm"


# --------------------------------------------------------------------------------------------
# job specs


def test_every_spec_expands_to_a_real_command(cli):
    from facefab.training.runtime import SYSTEMS

    parser = cli.build_parser()
    kinds = set()
    for path in sorted(SPECS.glob("*.yaml")):
        spec = load_spec(path)
        args = _parse(parser, spec_to_argv(spec), path.name)
        assert args.command == spec.kind
        kinds.add(spec.kind)
        if spec.kind == "train":
            assert spec.system in SYSTEMS
        if not path.name.startswith("local_"):
            assert spec.out.startswith(f"s3://{ENV['FACEFAB_BUCKET']}/"), f"{path.name}: out from ${{FACEFAB_BUCKET}}"
        with materialized_argv(spec) as argv:  # the --config file the subcommand reads
            if spec.config:
                cfg = Path(argv[argv.index("--config") + 1])
                assert yaml.safe_load(cfg.read_text()) == spec.config
        if spec.config:
            assert not cfg.exists(), "the temporary config is removed afterwards"
    assert kinds == {"preprocess", "dub", "train"}


def test_dry_run_prints_the_argv(cli, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths follow the spec file, not the current directory
    assert cli.main(["run", str(SPECS / "local_preprocess.yaml"), "--dry-run"]) == 0
    command, *plan = capsys.readouterr().out.splitlines()
    assert command == f"facefab preprocess {REPO / 'samples'} --out {REPO / 'out' / 'local'} --progress"
    assert all(line.startswith("#") for line in plan)  # the plan, as comments
    cpus = os.cpu_count()
    assert plan[0].startswith(f"# plan on this machine ({cpus} CPUs")
    chain = [line for line in plan if "actor pool of" in line]
    assert len(chain) == 1 and f"actor pool of {cpus}, " in chain[0]  # fixed: one per CPU

    assert cli.main(["run", str(SPECS / "train_facevid2vid.yaml"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert shlex.split(lines[0]) == ["facefab", "train", "facevid2vid", "--data",
                                     "s3://test-bucket/datasets/talking-faces-v1",
                                     "--out", "s3://test-bucket/checkpoints/facevid2vid",
                                     "--config", CONFIG_PLACEHOLDER, "--workers", "4", "--gpus-per-worker", "1",
                                     "--max-steps", "200000", "--no-progress"]
    assert yaml.safe_load("\n".join(lines[2:]))["run_name"] == "facevid2vid-paper"
    assert lines[-1] == "#   facevid2vid: 4 Ray Train workers, 6 CPU + 1 GPU each (the cluster must hold them at start)"


def test_dry_run_never_prints_secrets(cli, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("S3_SECRET", "hunter2-very-secret")
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "version": 1, "kind": "preprocess", "inputs": "s3://user:${S3_SECRET}@bucket/in", "out": "s3://bucket/out",
        "storage_options": {"key": "AKIA", "secret": "${S3_SECRET}"},
        "config": {"speech_encoder": {"model_path": "s3://u:${S3_SECRET}@b/m"}}}))
    assert cli.main(["run", str(spec), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "<redacted>" in out
    assert "s3://bucket/out" in out  # the rest of the command stays readable


def test_spec_env_expansion_paths_and_flags(tmp_path):
    env = {"BUCKET": "b", "EP": "http://127.0.0.1:9000"}
    spec = parse_spec({
        "version": 1, "kind": "preprocess", "inputs": "clips/*.mp4", "out": "s3://${BUCKET}/${SUB:-ds}/$$x",
        "storage_options": {"client_kwargs": {"endpoint_url": "${EP}"}},
        "options": {"resume": False, "max_attempts": 5, "limit": None},
        "config": {"faces": {"min_track_frames": 12}},
    }, base_dir=tmp_path, env=env)
    assert spec_to_argv(spec, "cfg.yaml") == [
        "preprocess", str(tmp_path / "clips" / "*.mp4"), "--out", "s3://b/ds/$x",
        "--storage-options", '{"client_kwargs":{"endpoint_url":"http://127.0.0.1:9000"}}',
        "--config", "cfg.yaml", "--no-resume", "--max-attempts", "5"]
    dub = parse_spec({"version": 1, "kind": "dub", "video": "v.mp4", "audio": "s3://b/a.wav", "out": "o"},
                     base_dir=tmp_path, env=env)
    assert dub.video == str(tmp_path / "v.mp4") and dub.audio == "s3://b/a.wav" and dub.out == str(tmp_path / "o")
    train = parse_spec({"version": 1, "kind": "train", "system": "facevid2vid", "data": "d", "out": "c",
                        "options": {"workers": 2, "gpus_per_worker": 0.5, "deepspeed": "ds.json"}}, env=env)
    assert spec_to_argv(train) == ["train", "facevid2vid", "--data", "d", "--out", "c", "--workers", "2",
                                   "--gpus-per-worker", "0.5", "--deepspeed", "ds.json"]


BASE = {"version": 1, "kind": "preprocess", "inputs": ["a.mp4"], "out": "o"}


@pytest.mark.parametrize("change, message", [
    ({"kind": "transcode"}, "unknown job kind 'transcode'; choose from ['dub', 'preprocess', 'train']"),
    ({"out": None}, "missing `out`"),
    ({"inptus": ["x"]}, "unknown key(s) ['inptus'] for kind 'preprocess'"),
    ({"manifest": "m.parquet"}, "belong(s) to another kind"),
    ({"version": None}, "missing `version`"),
    ({"version": 2}, "unsupported spec version 2"),
    ({"inputs": []}, "preprocess needs `inputs`"),
    ({"options": {"workers": 2}}, "options: unknown option(s) ['workers'] for kind 'preprocess'"),
    ({"options": {"max_attempts": "3"}}, "options.max_attempts: expected int, got '3'"),
    ({"config": {"faces": {"min_track_frame": 3}}}, "unknown field(s) ['min_track_frame']"),
    ({"out": "s3://${FACEFAB_TEST_UNSET_VAR}/x"}, "out: environment variable FACEFAB_TEST_UNSET_VAR is not set"),
    ({"kind": "dub", "inputs": None, "manifest": "m", "video": "v"}, "not both"),
    ({"kind": "dub", "inputs": None}, "not neither"),
    ({"kind": "train", "inputs": None, "system": "facevid2vid"}, "train needs `data`"),
    ({"kind": "train", "inputs": None, "system": "facevid2vid", "data": "d", "config": {"system": "x"}},
     "set the system at the top level"),
])
def test_spec_validation_errors_are_clear(change, message, monkeypatch):
    monkeypatch.delenv("FACEFAB_TEST_UNSET_VAR", raising=False)
    data = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(ValueError) as exc:
        parse_spec(data, source="bad.yaml")
    assert message in str(exc.value) and str(exc.value).startswith("bad.yaml: ")


def test_run_reports_spec_errors_in_one_line(cli, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nkind: preprocess\ninputs: [a.mp4]\n")
    assert cli.main(["run", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"facefab run: error: {bad}: missing `out` (the output root: a local path or s3://bucket/prefix)"
    bad.write_text("version: 1\nkind: [unclosed\n")
    assert cli.main(["run", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "job spec not found" in capsys.readouterr().err


def test_run_preprocesses_a_sample_locally(cli, tmp_path, ray_local, capsys):
    from facefab.manifests import read_manifest

    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "version": 1, "kind": "preprocess",
        "inputs": [str(REPO / "samples" / "talking_d6_4s.mp4")],
        "out": "out",  # relative: next to the spec file
        "options": {"progress": False},
        "config": {"operators": ["probe", "shots"]},
    }))
    assert cli.main(["run", str(spec)]) == 0
    assert f"facefab preprocess {REPO / 'samples' / 'talking_d6_4s.mp4'} --out {tmp_path / 'out'}" in \
        capsys.readouterr().err
    rows = read_manifest(str(tmp_path / "out")).to_pylist()
    assert rows and all(r["status"] == "ok" for r in rows), [(r["status"], r["error"]) for r in rows]
