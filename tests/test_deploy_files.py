"""deploy/ checked statically (this machine has no container engine): every YAML file parses; every file the images
COPY exists; every `aegis` command line in the Dockerfiles, compose file, manifests and docs/operations.md is accepted
by the real CLI parser (so every command and flag exists); deploy/aegis.toml validates against AegisConfig and its
policies load and pass their inline tests; every environment variable is either expanded into the command line or
read by the project; the names that tie the pieces together (ports, paths, Secrets, ConfigMap keys, labels, the
non-root uid) agree with each other. The same topology runs for real as processes in tests/test_replicas.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from aegis_proxy.cli import COMMANDS, build_parser
from aegis_proxy.config import AegisConfig, load_config
from aegis_proxy.policy.loader import load_policy
from aegis_proxy.policy.testing import run_tests

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILES = ("Dockerfile", "Dockerfile.cuda")
# Where the images put things (deploy/Dockerfile): the source tree, and the config the deployments mount.
IN_IMAGE = {PurePosixPath("/opt/aegis-proxy"): ROOT, PurePosixPath("/etc/aegis"): DEPLOY}
IMAGE = "aegis-proxy:0.1.0"
UID = 10001
PLACEHOLDER = "postgresql+psycopg2://aegis:secret@db.example:5432/aegis"
COMMAND_NAMES = {name for name, *_ in COMMANDS}  # `aegis NAME`; other words after "aegis" are prose


def cli_problem(argv: list[str]) -> str | None:
    """None if `aegis ARGV` parses with the real parser (every command and flag exists), else argparse's complaint."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exit_:
        return None if exit_.code == 0 else stderr.getvalue().strip().splitlines()[-1]
    return None


def project_env_vars() -> set[str]:
    """Environment variables the project reads (os.environ.get / os.getenv / os.environ[...] with a literal name)."""
    pattern = re.compile(
        r"""os\.(?:environ\.get|getenv)\(\s*["']([A-Z0-9_]+)["']|os\.environ\[\s*["']([A-Z0-9_]+)["']"""
    )
    found: set[str] = set()
    for path in (ROOT / "aegis_proxy").rglob("*.py"):
        for match in pattern.finditer(path.read_text(encoding="utf-8")):
            found.add(match.group(1) or match.group(2))
    return found


def on_host(container_path: str) -> Path:
    """The repository file a container path comes from (the image's source tree, or a mounted deploy/ file)."""
    path = PurePosixPath(container_path)
    for prefix, host in IN_IMAGE.items():
        if path.is_relative_to(prefix):
            return host / path.relative_to(prefix)
    raise AssertionError(f"{container_path} is neither in the image's source tree nor in a mounted deploy/ file")


def deploy_config() -> AegisConfig:
    return load_config(DEPLOY / "aegis.toml", check_files=False)


def k8s(kind: str, file: str) -> dict[str, Any]:
    docs = [doc for doc in yaml.safe_load_all((K8S / file).read_text()) if doc and doc["kind"] == kind]
    assert len(docs) == 1, f"{file}: expected one {kind}"
    return docs[0]


def pod_spec() -> dict[str, Any]:
    return k8s("Deployment", "deployment.yaml")["spec"]["template"]["spec"]


def aegis_container() -> dict[str, Any]:
    (container,) = [c for c in pod_spec()["containers"] if c["name"] == "aegis"]
    return container


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def aegis_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if s.get("image") == IMAGE}


def listen_port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# -- every file parses ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs
    if path.parent == K8S and path.name != "kustomization.yaml":
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), path
            assert doc["metadata"]["name"]


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk - {"secret.yaml"}  # real secrets are created, never applied from the repository
    assert all((K8S / name).is_file() for name in listed)


# -- the images -------------------------------------------------------------------------------------------------------


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / name).read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_is_slim_non_root_and_copies_what_exists(name: str) -> None:
    steps = dockerfile(name)
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for op, args in steps if op == "USER"]
    assert users and users[-1] == f"{UID}:{UID}"  # numeric, so Kubernetes' runAsNonRoot can check it
    ignored = (DEPLOY / f"{name}.dockerignore").read_text().splitlines()
    for op, args in steps:
        if op == "COPY":
            *sources, _target = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source}: no such file in the repository"
                assert f"!{source.rstrip('/')}" in [line.rstrip("/") for line in ignored], f"{source} is filtered out"
    exposed = {int(port) for op, args in steps if op == "EXPOSE" for port in args.split()}
    config = deploy_config()
    assert exposed == {listen_port(config.listen), listen_port(config.admin)}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_a_real_aegis_command(name: str) -> None:
    steps = dict(dockerfile(name))
    entrypoint, command = json.loads(steps["ENTRYPOINT"]), json.loads(steps["CMD"])
    assert entrypoint == ["aegis"]
    assert cli_problem(command) is None, cli_problem(command)
    assert command[command.index("--config") + 1] == "/etc/aegis/aegis.toml"
    health = json.loads(steps["HEALTHCHECK"].split("CMD", 1)[1])
    assert f":{listen_port(deploy_config().admin)}/healthz" in health[-1]


def test_cuda_image_installs_the_probe_extra_with_the_pinned_torch() -> None:
    steps = dockerfile("Dockerfile.cuda")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any("pip install -e '.[probe]'" in args for op, args in steps if op == "RUN")
    pinned = next(req for req in extras["probe"] if req.startswith("torch=="))
    (torch_arg,) = [args for op, args in steps if op == "ARG" and args.startswith("TORCH_VERSION=")]
    assert f"torch=={torch_arg.split('=', 1)[1]}" == pinned  # else pip swaps the CUDA build for the CPU one


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_sets_only_variables_something_reads(name: str) -> None:
    python_and_pip = {
        "PYTHONDONTWRITEBYTECODE",
        "PYTHONUNBUFFERED",
        "PIP_NO_CACHE_DIR",
        "PIP_DISABLE_PIP_VERSION_CHECK",
    }
    env = " ".join(args for op, args in dockerfile(name) if op == "ENV")
    names = set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", env))
    assert names
    for var in names - python_and_pip:
        assert var in project_env_vars(), f"{name} sets {var}, which nothing in aegis_proxy reads"


# -- the configuration every replica mounts ---------------------------------------------------------------------------


def test_deploy_config_validates_and_serves_probes_off_loopback() -> None:
    config = deploy_config()
    raw = tomllib.loads((DEPLOY / "aegis.toml").read_text())
    assert set(raw) <= set(AegisConfig.model_fields)  # (load_config refuses unknown keys too)
    assert config.listen.startswith("0.0.0.0:") and config.admin.startswith("0.0.0.0:")  # kubelet probes the pod IP
    assert "origin" in raw["audit"]  # a fixed origin: every replica appends to the same chain
    assert "db" not in raw["audit"]  # the URL has a password: it comes from a secret, as --audit-db
    assert "replica" not in raw  # each replica is named after its host (pod) name


def test_deploy_policies_load_together_and_pass_their_tests() -> None:
    paths = [on_host(str(path)) for path in deploy_config().policies]
    assert all(path.is_file() for path in paths), paths
    policy_set = load_policy(paths)
    site = [str(path) for path in paths if path.is_relative_to(DEPLOY)]
    results = run_tests(policy_set, files=site)
    assert results and all(result.passed for result in results), [r for r in results if not r.passed]


def test_configmap_is_exactly_the_deploy_files() -> None:
    data = k8s("ConfigMap", "configmap.yaml")["data"]
    assert data == {
        "aegis.toml": (DEPLOY / "aegis.toml").read_text(),
        "site.aegis": (DEPLOY / "policies" / "site.aegis").read_text(),
    }


# -- docker compose ---------------------------------------------------------------------------------------------------


def interpolated(text: str) -> tuple[str, set[str]]:
    """`text` with compose's ${VAR...} replaced by a placeholder, and the variable names."""
    names = set(re.findall(r"\$\{([A-Z0-9_]+)[^}]*\}", text))
    return re.sub(r"\$\{[A-Z0-9_]+[^}]*\}", "secret", text), names


def test_compose_runs_two_replicas_of_one_chain() -> None:
    spec = compose()
    services = aegis_services()
    assert len(services) == 2 and "postgres" in spec["services"]
    env_example = dict(
        line.split("=", 1)
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if "=" in line and line[0] != "#"
    )
    config = deploy_config()
    published = []
    for name, service in services.items():
        argv = [interpolated(part)[0] for part in service["command"]]
        assert cli_problem(argv) is None, (name, cli_problem(argv))
        for part in service["command"]:
            assert interpolated(part)[1] <= set(env_example), f"{name}: a variable missing from .env.example"
        assert argv[argv.index("--audit-db") + 1].startswith("postgresql+psycopg2://") and "@postgres:" in argv[-1]
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        config_path = argv[argv.index("--config") + 1]
        assert (DEPLOY / mounts[config_path]).resolve() == DEPLOY / "aegis.toml"
        for policy in config.policies:
            mounted = [target for target in mounts if PurePosixPath(policy).is_relative_to(target)]
            host = DEPLOY / mounts[mounted[0]] / PurePosixPath(policy).relative_to(mounted[0]) if mounted else None
            if PurePosixPath(policy).is_relative_to("/opt/aegis-proxy"):
                continue  # in the image
            assert host is not None and host.resolve().is_file(), f"{name}: {policy} is not mounted from deploy/"
        assert [f"/run/secrets/{secret}" for secret in service["secrets"]] == [str(config.audit.key)]
        assert mounts[str(config.data_dir)]  # a writable volume for the proxy's state
        assert (ROOT / service["build"]["context"].replace("..", ".") / service["build"]["dockerfile"]).is_file()
        published.append({int(p.split(":")[1]) for p in service["ports"]})
        assert service.get("read_only") is True
    assert all(ports == {listen_port(config.listen), listen_port(config.admin)} for ports in published)
    (secret,) = spec["secrets"].values()
    assert (DEPLOY / secret["file"]).parent.is_dir()
    assert (DEPLOY / "secrets" / ".gitignore").read_text().splitlines()[-2:] == ["*", "!.gitignore"]


# -- Kubernetes -------------------------------------------------------------------------------------------------------


def test_deployment_command_and_environment() -> None:
    container = aegis_container()
    expanded = set(re.findall(r"\$\(([A-Z0-9_]+)\)", " ".join(container["args"])))
    argv = [re.sub(r"\$\([A-Z0-9_]+\)", PLACEHOLDER, part) for part in container["args"]]
    assert cli_problem(argv) is None, cli_problem(argv)
    defined = {env["name"] for env in container.get("env", [])}
    assert expanded <= defined
    for name in defined - expanded:
        assert name in project_env_vars(), f"{name} is set but neither expanded into args nor read by aegis"
    secrets = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all((K8S / "secret.yaml").read_text())}
    for env in container["env"]:
        ref = env["valueFrom"]["secretKeyRef"]
        assert ref["key"] in secrets[ref["name"]]["stringData"]
    assert container["image"] == IMAGE == pod_spec()["initContainers"][0]["image"]


def test_deployment_probes_hit_the_admin_listener() -> None:
    container = aegis_container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    config = deploy_config()
    assert ports == {"proxy": listen_port(config.listen), "admin": listen_port(config.admin)}
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {name: (probe["path"], probe["port"]) for name, probe in probes.items()} == {
        "startupProbe": ("/healthz", "admin"),
        "livenessProbe": ("/healthz", "admin"),
        "readinessProbe": ("/readyz", "admin"),
    }


def test_deployment_mounts_what_the_config_names() -> None:
    spec, container = pod_spec(), aegis_container()
    config = deploy_config()
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    configmap = k8s("ConfigMap", "configmap.yaml")
    files: dict[str, str] = {}  # container path -> what provides it
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            assert volume["configMap"]["name"] == configmap["metadata"]["name"]
            for item in volume["configMap"]["items"]:
                assert item["key"] in configmap["data"]
                files[str(PurePosixPath(mount["mountPath"]) / item["path"])] = f"configmap:{item['key']}"
        else:
            files[mount["mountPath"]] = mount["name"]
    assert files["/etc/aegis/aegis.toml"] == "configmap:aegis.toml"
    for policy in config.policies:
        assert str(policy) in files or on_host(str(policy)).is_file(), f"{policy} is neither mounted nor in the image"
    # The key: copied by the init container from the Secret into the memory volume the proxy reads it from.
    init = spec["initContainers"][0]
    assert init["command"][:3] == ["install", "-m", "0600"] and init["command"][-1] == str(config.audit.key)
    key_dir = str(PurePosixPath(str(config.audit.key)).parent)
    assert files[key_dir] == "signing-key" and volumes["signing-key"]["emptyDir"]["medium"] == "Memory"
    secret_mount = next(m for m in init["volumeMounts"] if volumes[m["name"]].get("secret"))
    assert init["command"][3] == f"{secret_mount['mountPath']}/audit.key"
    assert volumes[secret_mount["name"]]["secret"]["secretName"] == "aegis-signing-key"
    assert files[str(config.data_dir)] == "data"


def test_deployment_runs_as_the_image_user_with_a_read_only_root() -> None:
    spec = pod_spec()
    context = spec["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == UID == context["fsGroup"]
    for container in [*spec["initContainers"], *spec["containers"]]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_service_and_budget_select_the_pods() -> None:
    deployment = k8s("Deployment", "deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = k8s("Service", "service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    names = {port["name"] for port in aegis_container()["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} == names
    budget = k8s("PodDisruptionBudget", "pdb.yaml")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    assert deployment["spec"]["replicas"] >= 2


# -- every aegis command written down ---------------------------------------------------------------------------------


def aegis_command_lines(text: str) -> list[list[str]]:
    """Each `aegis ...` command in `text` (code, comments or prose lines), continuations joined, cut at a pipe, `&&`,
    `;` or a comment, as argv without the leading `aegis`."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for match in re.finditer(r"(?:^|[\s`$(])aegis ([a-z][a-z-]*(?: [^\n`]*)?)", joined, flags=re.MULTILINE):
        line = re.split(r"\s(?:\||&&|;|#)\s", match.group(1))[0].rstrip(")").strip()
        try:
            argv = shlex.split(line)
        except ValueError:
            argv = line.split()
        found.append(argv)
    return found


DOCUMENTS = [
    DEPLOY / "docker-compose.yml",
    K8S / "secret.yaml",
    K8S / "kustomization.yaml",
    ROOT / "docs" / "operations.md",
]


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_aegis_command_written_down_exists(path: Path) -> None:
    commands = [argv for argv in aegis_command_lines(path.read_text()) if argv and argv[0] in COMMAND_NAMES]
    if path.name == "operations.md":
        assert len(commands) >= 8  # the guide is made of commands; make sure we read them
    problems = [(argv, mention_problem(argv)) for argv in commands if mention_problem(argv) is not None]
    assert problems == []


def mention_problem(argv: list[str]) -> str | None:
    """A full command line must parse; a bare mention in prose (`aegis keys rotate`) must name a real command."""
    bare = all(re.fullmatch(r"[a-z][a-z-]*", word) for word in argv) and len(argv) <= 3
    return cli_problem([*argv, "--help"] if bare else argv)


def test_operations_guide_names_only_real_files_and_config_keys() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    for name in re.findall(r"`((?:deploy|docs|audit|policies|bench|tests)/[\w./-]+)`", text):
        # (the key under deploy/secrets/ is the operator's to create: its folder must exist)
        assert (ROOT / name).exists() or (name.startswith("deploy/secrets/") and (ROOT / name).parent.is_dir()), name
    keys = set(AegisConfig.model_fields) | {
        f"audit.{key}" for key in AegisConfig.model_fields["audit"].annotation.model_fields
    }
    for key in re.findall(r"`((?:audit\.)?[a-z_]+) = ", text):
        assert key in keys, key
