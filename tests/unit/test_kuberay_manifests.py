"""deploy/kuberay, checked offline: every manifest is what a Kubernetes API server (with
KubeRay's CRD) would accept, and says what the design needs.

- The core kinds against the Kubernetes JSON schemas that kubernetes-validate ships, in
  strict mode (an unknown field is an error), for the oldest Kubernetes the manifests are
  meant for and the newest the package knows.
- The RayCluster against the openAPIV3Schema of KubeRay 1.7's CRD (a copy in
  deploy/kuberay/schema/, with its source and digest in the notice there), made as strict as the API
  server: a field its structural pruning would drop without a word is refused here, and so
  are duplicate keys in list-maps and any field a CEL rule guards (not evaluated offline).
- The design's own rules (CHECKS): a head without CPUs, CPU and GPU worker groups with
  min <= replicas <= max, the in-tree autoscaler, Ray's token and a short reconnect timeout
  on every Ray container, only framefleet settings and CLI commands that exist, every Secret,
  ConfigMap and Service reference resolved, and so on.

A check that cannot fail proves nothing: each is shown refusing a broken copy.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import io
import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from framefleet.cli import build_parser
from framefleet.coordinator.pools import decoders_max, inference_max
from framefleet.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kuberay"
CRD = DEPLOY / "schema" / "ray.io_rayclusters.yaml"
CRD_COMMIT = "feeaf72facab4881ba2b179248bb67315634e229"
K8S_VERSIONS = ("1.30", "1.37")
SECRETS_FILE = "secrets.example.yaml"  # applied by hand, never by `kubectl apply -k`
NOT_RESOURCES = {"kustomization.yaml", SECRETS_FILE}
RECONNECT = "RAY_gcs_rpc_server_reconnect_timeout_s"
RAY_DEFAULT_RECONNECT_S = 60

Doc = dict[str, Any]
Bundle = dict[str, list[Doc]]  # file name -> its documents
Check = Callable[[Bundle], list[str]]


# -- reading the manifests -------------------------------------------------------------------


@functools.cache
def _loaded() -> Bundle:
    return {
        path.name: [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        for path in sorted(DEPLOY.glob("*.yaml"))
    }


def manifests() -> Bundle:
    """A fresh copy of the documents of deploy/kuberay/*.yaml, by file (tests mutate it)."""
    return copy.deepcopy(_loaded())


def objects(bundle: Bundle, *, applied_only: bool = False) -> Iterator[Doc]:
    for name, docs in bundle.items():
        if name == "kustomization.yaml" or (applied_only and name in NOT_RESOURCES):
            continue
        yield from docs


def the(bundle: Bundle, kind: str, name: str | None = None) -> Doc:
    found = [
        d
        for d in objects(bundle)
        if d["kind"] == kind and name in (None, d["metadata"].get("name"))
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kustomization(bundle: Bundle) -> Doc:
    doc: Doc = bundle["kustomization.yaml"][0]
    return doc


def raycluster(bundle: Bundle) -> Doc:
    return the(bundle, "RayCluster")


def group(bundle: Bundle, name: str) -> Doc:
    groups = raycluster(bundle)["spec"].get("workerGroupSpecs", [])
    found: Doc = next(g for g in groups if g.get("groupName") == name)
    return found


def first_container(template: Doc) -> Doc:
    """A pod template's first container: the Ray container of a KubeRay group."""
    c: Doc = template["spec"]["containers"][0]
    return c


def pod_templates(bundle: Bundle) -> Iterator[tuple[str, Doc, dict[str, str]]]:
    """(where, pod template, the labels its pods get) for every pod the manifests make:
    KubeRay's pods get its ray.io labels too."""
    for d in objects(bundle, applied_only=True):
        kind, name = d["kind"], d["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet"):
            t = d["spec"]["template"]
            yield f"{kind}/{name}", t, dict(t.get("metadata", {}).get("labels", {}))
        elif kind == "RayCluster":
            groups = [("head", d["spec"]["headGroupSpec"])]
            groups += [(g["groupName"], g) for g in d["spec"].get("workerGroupSpecs", [])]
            for group_name, g in groups:
                head = group_name == "head"
                labels = dict(g["template"].get("metadata", {}).get("labels", {}))
                labels["ray.io/cluster"] = name
                labels["ray.io/group"] = "headgroup" if head else group_name
                labels["ray.io/node-type"] = "head" if head else "worker"
                yield f"RayCluster/{name}/{group_name}", g["template"], labels


def all_containers(bundle: Bundle) -> Iterator[tuple[str, Doc]]:
    for where, t, _ in pod_templates(bundle):
        for c in t["spec"].get("initContainers", []) + t["spec"].get("containers", []):
            yield f"{where}/{c.get('name')}", c


def argv(c: Doc) -> list[str]:
    return [str(x) for x in c.get("command", []) + c.get("args", [])]


def is_coordinator(c: Doc) -> bool:
    return argv(c)[:2] == ["framefleet", "coordinator"]


def ray_nodes(bundle: Bundle) -> Iterator[tuple[str, Doc, Doc, dict[str, str]]]:
    """(where, container, pod template, rayStartParams) for every container that runs a Ray
    node: the head's, each worker group's, and each coordinator's (it joins the cluster as
    a zero-CPU node)."""
    spec = raycluster(bundle)["spec"]
    head = spec["headGroupSpec"]
    yield "head", first_container(head["template"]), head["template"], head["rayStartParams"]
    for g in spec.get("workerGroupSpecs", []):
        yield (
            f"worker group {g.get('groupName')}",
            first_container(g["template"]),
            g["template"],
            g.get("rayStartParams", {}),
        )
    for where, t, _ in pod_templates(bundle):
        for c in t["spec"]["containers"]:
            if is_coordinator(c):
                yield f"{where}/{c['name']}", c, t, {}


def env_of(c: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in c.get("env", [])}


def quantity(text: object) -> float:
    """A Kubernetes quantity ("4Gi", "500m", 3) as a number (bytes, cores)."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text))
    assert m, f"not a quantity: {text!r}"
    units = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    units.update({"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40})
    return float(m.group(1)) * units[m.group(2)]


def configmaps(bundle: Bundle) -> dict[str, dict[str, str]]:
    return {
        d["metadata"]["name"]: dict(d.get("data", {}))
        for d in objects(bundle, applied_only=True)
        if d["kind"] == "ConfigMap"
    }


def secrets(bundle: Bundle) -> dict[str, dict[str, str]]:
    """The Secrets secrets.example.yaml describes: their keys and placeholder values."""
    return {
        d["metadata"]["name"]: {**d.get("data", {}), **d.get("stringData", {})}
        for d in bundle.get(SECRETS_FILE, [])
        if d["kind"] == "Secret"
    }


# -- the core kinds: kubernetes-validate -----------------------------------------------------


def core_problems(doc: Doc, version: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        return [f"{doc['kind']} {doc['metadata'].get('name')}: /{path}: {exc.message}"]
    return []


# -- the RayCluster: KubeRay's CRD schema, as strict as the API server -----------------------


def structural(schema: Doc) -> Doc:
    """An openAPIV3Schema node as plain JSON Schema, as strict as the API server is with a
    structural schema: an object without x-kubernetes-preserve-unknown-fields gets
    additionalProperties false (the server would prune an unknown field without a word, so
    a misspelled one would be lost: it is refused here), x-kubernetes-int-or-string becomes
    integer-or-string, nullable allows null."""
    s = dict(schema)
    if "properties" in s:
        s["properties"] = {k: structural(v) for k, v in s["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(s.get(key), dict):
            s[key] = structural(s[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in s:
            s[key] = [structural(x) for x in s[key]]
    if s.pop("x-kubernetes-int-or-string", False):
        s.pop("type", None)
        s.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    preserve = s.pop("x-kubernetes-preserve-unknown-fields", False)
    if s.get("type") == "object" and not preserve and "additionalProperties" not in s:
        s["additionalProperties"] = False
    if s.pop("nullable", False):
        s = {"anyOf": [{"type": "null"}, s]}
    return s


def _list_type(validator: Any, list_type: str, instance: Any, schema: Doc) -> Iterator[Any]:
    """x-kubernetes-list-type: the API server refuses duplicate keys in a map list (an env
    var or a port twice) and duplicate items in a set."""
    if not isinstance(instance, list) or list_type == "atomic":
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen: set[str] = set()
    for item in instance:
        is_map = list_type == "map" and isinstance(item, dict)
        key = repr([item.get(k) for k in keys]) if is_map else repr(item)
        if key in seen:
            yield jsonschema.ValidationError(f"duplicate item in a list-type {list_type}: {key}")
        seen.add(key)


def _cel(validator: Any, rules: list[Doc], instance: Any, schema: Doc) -> Iterator[Any]:
    """x-kubernetes-validations: CEL rules are not evaluated here, so a field they guard is
    refused rather than passed unchecked (keep the manifests off it)."""
    messages = "; ".join(str(r.get("message", r.get("rule"))) for r in rules)
    yield jsonschema.ValidationError(f"guarded by CEL rules not checked offline: {messages}")


def _formats() -> jsonschema.FormatChecker:
    """The formats KubeRay's CRD uses: int32, int64 and date-time (in its status)."""
    checker = jsonschema.FormatChecker(formats=())

    def bounded(bits: int) -> Callable[[object], bool]:
        def check(value: object) -> bool:
            return not isinstance(value, int) or -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)

        return check

    def date_time(value: object) -> bool:
        if isinstance(value, str):
            try:
                datetime.fromisoformat(value)
            except ValueError:
                return False
        return True

    checker.checks("int32")(bounded(32))
    checker.checks("int64")(bounded(64))
    checker.checks("date-time")(date_time)
    return checker


@functools.cache
def _crd_validator() -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # 0.2 s instead of 5
    crd = yaml.load(CRD.read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1" and v["storage"])
    schema = structural(version["schema"]["openAPIV3Schema"])
    # The API server checks a custom resource's metadata as ObjectMeta: crd_problems does.
    schema["properties"]["metadata"] = {"type": "object"}
    cls = jsonschema.validators.extend(
        jsonschema.Draft4Validator,  # OpenAPI 3.0's schemas are draft 4's dialect
        {"x-kubernetes-list-type": _list_type, "x-kubernetes-validations": _cel},
    )
    return cls(schema, format_checker=_formats())


def crd_problems(doc: Doc) -> list[str]:
    """Why the API server, with KubeRay 1.7's CRD installed, would refuse or prune doc."""
    errors = sorted(_crd_validator().iter_errors(doc), key=lambda e: list(map(str, e.path)))
    problems = [f"/{'/'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in errors]
    if doc.get("apiVersion") != "ray.io/v1" or doc.get("kind") != "RayCluster":
        problems.append("not a ray.io/v1 RayCluster")
    # its metadata as ObjectMeta, through a kind whose schema kubernetes-validate has
    meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata", {})}
    return problems + core_problems(meta, K8S_VERSIONS[-1])


# -- the design's rules ----------------------------------------------------------------------


KUSTOMIZE_FIELDS = {
    "apiVersion", "kind", "namespace", "resources", "images", "labels", "commonLabels",
    "commonAnnotations", "patches", "components", "configMapGenerator", "secretGenerator",
    "generatorOptions", "namePrefix", "nameSuffix", "replicas",
}  # fmt: skip


def check_kustomization_lists_every_file(bundle: Bundle) -> list[str]:
    k = kustomization(bundle)
    listed = list(k.get("resources", []))
    problems = [f"kustomization.yaml: unknown field {f}" for f in k if f not in KUSTOMIZE_FIELDS]
    if (k.get("apiVersion"), k.get("kind")) != ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
        problems.append("kustomization.yaml is no kustomize.config.k8s.io/v1beta1 Kustomization")
    files = sorted(set(bundle) - NOT_RESOURCES)
    problems += [f"{f} is not in kustomization.yaml" for f in files if f not in listed]
    problems += [f"kustomization.yaml lists {r}, not a file here" for r in listed if r not in files]
    if SECRETS_FILE in listed:
        problems.append(f"{SECRETS_FILE} is listed: apply -k would overwrite the real Secrets")
    if listed[:1] != ["namespace.yaml"]:
        problems.append("namespace.yaml is not applied first")
    return problems


def check_one_namespace(bundle: Bundle) -> list[str]:
    namespace = kustomization(bundle).get("namespace")
    problems = [] if namespace else ["kustomization.yaml sets no namespace"]
    for d in objects(bundle):
        meta = d["metadata"]
        where = meta["name"] if d["kind"] == "Namespace" else meta.get("namespace")
        if where != namespace:
            problems.append(f"{d['kind']} {meta['name']} is not in namespace {namespace}")
    return problems


def check_images(bundle: Bundle) -> list[str]:
    """framefleet's images are set once, in kustomization.yaml; any other is pinned to a
    tag; the GPU workers run the CUDA build."""
    set_once = {i["name"] for i in kustomization(bundle).get("images", [])}
    problems = []
    for where, c in all_containers(bundle):
        image = str(c.get("image", ""))
        name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
        if name not in set_once and tag in ("", "latest"):
            problems.append(f"{where}: image {image!r} is neither set once nor pinned")
    gpu = str(first_container(group(bundle, "gpu")["template"]).get("image"))
    if not gpu.startswith("framefleet-cuda:"):
        problems.append(f"the GPU workers run {gpu!r}, not the CUDA build")
    return problems


def check_head_has_no_cpus(bundle: Bundle) -> list[str]:
    cpus = raycluster(bundle)["spec"]["headGroupSpec"].get("rayStartParams", {}).get("num-cpus")
    return [] if cpus == "0" else [f'the head has num-cpus {cpus!r}, not "0"']


@functools.cache
def ray_start_options() -> frozenset[str]:
    """`ray start`'s options, read from the installed Ray's source: importing its CLI takes
    seconds, reading it milliseconds."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.origin is not None
    text = (Path(spec.origin).parent / "scripts" / "scripts.py").read_text()
    end = text.index("\ndef start(")
    options = set(
        re.findall(r'"--([a-z0-9][a-z0-9-]*)"', text[text.rindex("@cli.command", 0, end) : end])
    )
    assert {"num-cpus", "object-store-memory", "dashboard-host"} <= options
    return frozenset(options)


def check_ray_start_params(bundle: Bundle) -> list[str]:
    """KubeRay turns each rayStartParams key into `ray start --key=value`: a key that is no
    option of `ray start` makes every pod of the group fail to start."""
    return [
        f"{where}: rayStartParams {key} is no option of `ray start`"
        for where, _, _, params in ray_nodes(bundle)
        for key in params
        if key not in ray_start_options()
    ]


def check_worker_groups(bundle: Bundle) -> list[str]:
    groups = raycluster(bundle)["spec"].get("workerGroupSpecs", [])
    names = sorted(g.get("groupName") for g in groups)
    problems = [] if names == ["cpu", "gpu"] else [f"worker groups {names}, not cpu and gpu"]
    for g in groups:
        low, n, high = (g.get(k) for k in ("minReplicas", "replicas", "maxReplicas"))
        if not all(isinstance(x, int) for x in (low, n, high)):
            problems.append(f"group {g.get('groupName')}: min, replicas and max not all set")
        elif not 0 <= low <= n <= high or high < 1:
            problems.append(f"group {g.get('groupName')}: not 0 <= {low} <= {n} <= {high}")
    return problems


def check_full_pools_fit_the_groups(bundle: Bundle) -> list[str]:
    """The coordinator asks the autoscaler for its pools whole; autoscaler v2 adds no node
    at all for a request the groups' maxima cannot hold (the coordinator then shrinks it a
    quarter a tick, which costs a burst minutes). The pools' maxima under the cost cap,
    packed first-fit onto maxReplicas pods of each group, must fit."""
    settings = Settings.from_env(configmaps(bundle)["framefleet-config"])
    p = settings.pipeline
    n_inference = inference_max(settings)
    n_decoders = decoders_max(settings, n_inference)
    nodes = []
    for g in raycluster(bundle)["spec"].get("workerGroupSpecs", []):
        limits = first_container(g["template"]).get("resources", {}).get("limits", {})
        free = {
            "CPU": quantity(limits.get("cpu", 0)),
            "GPU": quantity(limits.get("nvidia.com/gpu", 0)),
        }
        nodes += [dict(free) for _ in range(int(g.get("maxReplicas", 0)))]
    wants = [{"CPU": p.cpus_per_inference, "GPU": p.gpus_per_inference}] * n_inference
    wants += [{"CPU": p.cpus_per_decoder, "GPU": 0.0}] * n_decoders
    for want in wants:
        node = next((n for n in nodes if all(n[k] >= v - 1e-9 for k, v in want.items())), None)
        if node is None:
            return [
                f"the pools' maxima ({n_inference} inference, {n_decoders} decode actors) do not"
                " fit the worker groups' maxReplicas: autoscaler v2 adds no node for the"
                " coordinator's request at full pools"
            ]
        for k, v in want.items():
            node[k] -= v
    return []


def check_gpu_group(bundle: Bundle) -> list[str]:
    problems = []
    for name, wants_gpus in (("gpu", True), ("cpu", False)):
        c = first_container(group(bundle, name)["template"])
        gpus = quantity(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        if wants_gpus and gpus < 1:
            problems.append("the gpu group's Ray container has no nvidia.com/gpu limit")
        if not wants_gpus and gpus:
            problems.append("the cpu group asks for GPUs")
    return problems


def check_autoscaler(bundle: Bundle) -> list[str]:
    spec = raycluster(bundle)["spec"]
    problems = [] if spec.get("enableInTreeAutoscaling") is True else ["no in-tree autoscaler"]
    if not spec.get("autoscalerOptions", {}).get("idleTimeoutSeconds"):
        problems.append("autoscalerOptions has no idleTimeoutSeconds")
    return problems


def check_reconnect_timeout(bundle: Bundle) -> list[str]:
    """Without GCS fault tolerance a raylet waits this long for a lost GCS before it exits
    (its pod then replaced, joining the new head): shorter than Ray's default, on every Ray
    container, each worker group's above all."""
    problems = []
    for where, c, _, _ in ray_nodes(bundle):
        value = str(env_of(c).get(RECONNECT, {}).get("value", ""))
        if not value.isdigit():
            problems.append(f"{where}: no {RECONNECT}")
        elif not 0 < int(value) < RAY_DEFAULT_RECONNECT_S:
            problems.append(f"{where}: {RECONNECT}={value} is not under Ray's default")
    return problems


def check_ray_auth(bundle: Bundle) -> list[str]:
    """Ray's token authentication: KubeRay's authOptions, and the token from that Secret on
    every Ray container (the coordinator's, which KubeRay does not make, included)."""
    auth = raycluster(bundle)["spec"].get("authOptions", {})
    secret = auth.get("secretName")
    problems = [] if auth.get("mode") == "token" else ["authOptions.mode is not token"]
    for where, c, _, _ in ray_nodes(bundle):
        env = env_of(c)
        if env.get("RAY_AUTH_MODE", {}).get("value") != "token":
            problems.append(f"{where}: RAY_AUTH_MODE is not token")
        ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
        if (ref.get("name"), ref.get("key")) != (secret, "auth_token"):
            problems.append(f"{where}: RAY_AUTH_TOKEN is not {secret}'s auth_token")
    return problems


class _Reads(Mapping[str, str]):
    """An empty environment that notes each variable Settings.from_env looks up."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.names.add(key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@functools.cache
def settings_variables() -> frozenset[str]:
    """Every FRAMEFLEET_* variable framefleet reads (settings.py's names, asked of it)."""
    reads = _Reads()
    Settings.from_env(reads)
    assert {"FRAMEFLEET_REDIS_URL", "FRAMEFLEET_API_TOKEN_FILE"} <= reads.names
    return frozenset(reads.names)


def check_settings_exist(bundle: Bundle) -> list[str]:
    names = [(where, e["name"]) for where, c in all_containers(bundle) for e in c.get("env", [])]
    names += [(f"ConfigMap {n}", k) for n, data in configmaps(bundle).items() for k in data]
    return [
        f"{where}: {name} is no framefleet setting"
        for where, name in names
        if name.startswith("FRAMEFLEET_") and name not in settings_variables()
    ]


def expanded(c: Doc, bundle: Bundle) -> tuple[list[str], list[str]]:
    """The container's command line with $(VAR) replaced as the kubelet does, and the
    variables it names that the container lacks (the kubelet would leave those as text)."""
    values: dict[str, str] = {}
    for source in c.get("envFrom", []):
        values.update(configmaps(bundle).get(source.get("configMapRef", {}).get("name"), {}))
    for e in c.get("env", []):
        values[e["name"]] = str(e.get("value", f"<{e['name']}>"))
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        if m.group(1) in values:
            return values[m.group(1)]
        missing.append(m.group(1))
        return m.group(0)

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, a) for a in argv(c)], missing


def cli_refuses(args: list[str]) -> str | None:
    """What framefleet's CLI says of these arguments; None when it takes them."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit:
        return (err.getvalue().strip().splitlines() or ["refused"])[-1]
    return None


def check_cli(bundle: Bundle) -> list[str]:
    problems = []
    for where, c in all_containers(bundle):
        line, missing = expanded(c, bundle)
        problems += [f"{where}: $({v}) names no variable of the container" for v in missing]
        if line[:1] == ["framefleet"] and (why := cli_refuses(line[1:])):
            problems.append(f"{where}: `{' '.join(line)}`: {why}")
    return problems


def _secret_refs(bundle: Bundle) -> Iterator[tuple[str, str, str | None]]:
    """(where, Secret, key or None for the whole Secret) for every reference to one."""
    auth = raycluster(bundle)["spec"].get("authOptions", {})
    if auth.get("secretName"):
        yield "RayCluster authOptions", auth["secretName"], "auth_token"
    for where, t, _ in pod_templates(bundle):
        for v in t["spec"].get("volumes", []):
            if "secret" in v:
                keys = [i["key"] for i in v["secret"].get("items", [])] or [None]
                for key in keys:
                    yield f"{where} volume {v['name']}", v["secret"]["secretName"], key
    for where, c in all_containers(bundle):
        for e in c.get("env", []):
            if ref := e.get("valueFrom", {}).get("secretKeyRef"):
                yield f"{where} {e['name']}", ref["name"], ref["key"]
        for source in c.get("envFrom", []):
            if "secretRef" in source:
                yield f"{where} envFrom", source["secretRef"]["name"], None


def check_secret_refs(bundle: Bundle) -> list[str]:
    """Every Secret a manifest reads is one that secrets.example.yaml describes (and the
    README tells how to create), with that key."""
    known = secrets(bundle)
    problems = []
    for where, name, key in _secret_refs(bundle):
        if name not in known:
            problems.append(f"{where}: no Secret {name} in {SECRETS_FILE}")
        elif key is not None and key not in known[name]:
            problems.append(f"{where}: Secret {name} has no key {key}")
    return problems


def check_secrets_are_placeholders(bundle: Bundle) -> list[str]:
    """secrets.example.yaml holds no credential: every value is a REPLACE_ME placeholder."""
    return [
        f"Secret {name}: {key} is not a REPLACE_ME placeholder"
        for name, values in secrets(bundle).items()
        for key, value in values.items()
        if "REPLACE_ME" not in str(value)
    ]


def check_configmap_refs(bundle: Bundle) -> list[str]:
    known = configmaps(bundle)
    problems = []
    for where, c in all_containers(bundle):
        refs = [(s["configMapRef"], None) for s in c.get("envFrom", []) if "configMapRef" in s]
        refs += [
            (ref, ref["key"])
            for e in c.get("env", [])
            if (ref := e.get("valueFrom", {}).get("configMapKeyRef"))
        ]
        for ref, key in refs:
            name = ref["name"]
            if name not in known:
                problems.append(f"{where}: no ConfigMap {name}")
            elif key is not None and key not in known[name]:
                problems.append(f"{where}: ConfigMap {name} has no key {key}")
    return problems


def _ports(t: Doc) -> set[object]:
    """A pod's container ports, by name and by number."""
    return {
        x
        for c in t["spec"]["containers"]
        for p in c.get("ports", [])
        for x in (p.get("name"), p.get("containerPort"))
        if x is not None
    }


def check_selectors(bundle: Bundle) -> list[str]:
    """Every Service and PodDisruptionBudget selects pods the manifests make (a Service's
    target port is one of theirs); every workload selects its own pods."""
    pods = [(t, labels) for _, t, labels in pod_templates(bundle)]

    def selected(selector: dict[str, str] | None) -> list[Doc]:
        wanted = (selector or {"<nothing>": "<nothing>"}).items()
        return [t for t, labels in pods if wanted <= labels.items()]

    problems = []
    for d in objects(bundle, applied_only=True):
        kind, name, spec = d["kind"], d["metadata"]["name"], d.get("spec", {})
        if kind == "Service":
            chosen = selected(spec.get("selector"))
            problems += [] if chosen else [f"Service {name} selects no pod"]
            for p in spec.get("ports", []):
                target = p.get("targetPort", p.get("port"))
                if chosen and not all(target in _ports(t) for t in chosen):
                    problems.append(f"Service {name}: no pod it selects has port {target}")
        elif kind == "PodDisruptionBudget" and not selected(spec["selector"].get("matchLabels")):
            problems.append(f"PodDisruptionBudget {name} selects no pod")
        elif kind in ("Deployment", "StatefulSet"):
            own = spec["template"].get("metadata", {}).get("labels", {}).items()
            if not spec["selector"].get("matchLabels", {}).items() <= own:
                problems.append(f"{kind} {name}: its selector does not match its pods")
    return problems


def check_no_ray_labels_elsewhere(bundle: Bundle) -> list[str]:
    """KubeRay owns the pods labelled ray.io/...: a coordinator pod labelled so could be
    counted or deleted as one of the cluster's."""
    return [
        f"{where} carries KubeRay's label {label}"
        for where, t, _ in pod_templates(bundle)
        if not where.startswith("RayCluster/")
        for label in t.get("metadata", {}).get("labels", {})
        if label.startswith("ray.io/")
    ]


def check_coordinator(bundle: Bundle) -> list[str]:
    """One Deployment of coordinators, with a standby, each joining the RayCluster through
    KubeRay's head Service at the head's GCS port."""
    cluster = raycluster(bundle)
    head_group = cluster["spec"]["headGroupSpec"]
    head = head_group.get("headService", {}).get("metadata", {}).get("name")
    head = head or f"{cluster['metadata']['name']}-head-svc"  # KubeRay's name for it
    port = head_group.get("rayStartParams", {}).get("port", "6379")
    deployments = [
        d
        for d in objects(bundle, applied_only=True)
        if d["kind"] == "Deployment"
        and any(is_coordinator(c) for c in d["spec"]["template"]["spec"]["containers"])
    ]
    if len(deployments) != 1:
        return [f"{len(deployments)} coordinator Deployments, not one"]
    problems = []
    if deployments[0]["spec"].get("replicas", 1) < 2:
        problems.append("one coordinator replica: no standby")
    for c in deployments[0]["spec"]["template"]["spec"]["containers"]:
        line, _ = expanded(c, bundle)
        joins = line[line.index("--join") + 1] if "--join" in line[:-1] else None
        if is_coordinator(c) and joins != f"{head}:{port}":
            problems.append(f"the coordinator joins {joins}, not {head}:{port}")
    return problems


def check_shared_memory(bundle: Bundle) -> list[str]:
    """Every Ray container has a memory-backed /dev/shm at least as large as its object
    store (else Ray warns and keeps its objects in /tmp, on disk)."""
    problems = []
    for where, c, t, params in ray_nodes(bundle):
        volumes = {v["name"]: v for v in t["spec"].get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        empty = volumes.get(mounts.get("/dev/shm"), {}).get("emptyDir", {})
        store = float(params.get("object-store-memory", 0))
        if empty.get("medium") != "Memory":
            problems.append(f"{where}: /dev/shm is not a memory-backed emptyDir")
        elif quantity(empty.get("sizeLimit", 0)) < store:
            problems.append(f"{where}: /dev/shm is smaller than its object-store-memory")
    return problems


def check_redis(bundle: Bundle) -> list[str]:
    """The queue's Valkey: AOF on a persistent volume, no eviction, its password from the
    Secret, a headless Service, and the example URL pointing at that Service."""
    sts = the(bundle, "StatefulSet", "framefleet-redis")
    c = first_container(sts["spec"]["template"])
    line = argv(c)
    flags = {a: b for a, b in itertools.pairwise(line) if a.startswith("--")}
    problems = [
        f"valkey {flag} is {flags.get(flag)!r}, not one of {sorted(wanted)}"
        for flag, wanted in (
            ("--appendonly", {"yes"}),
            ("--appendfsync", {"everysec", "always"}),
            ("--maxmemory-policy", {"noeviction"}),
        )
        if flags.get(flag) not in wanted
    ]
    var = re.fullmatch(r"\$\((\w+)\)", flags.get("--requirepass", ""))
    if not env_of(c).get(var.group(1) if var else "", {}).get("valueFrom", {}).get("secretKeyRef"):
        problems.append("valkey's --requirepass does not come from a Secret")
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    if mounts.get(flags.get("--dir", "")) not in claims:
        problems.append("valkey's --dir is not on a persistent volume claim")
    svc = the(bundle, "Service", sts["spec"]["serviceName"])
    if svc["spec"].get("clusterIP") != "None":
        problems.append(f"Service {svc['metadata']['name']} is not headless")
    url = secrets(bundle).get("framefleet-redis", {}).get("url", "")
    if not re.fullmatch(rf"redis://:[^@]+@{svc['metadata']['name']}:6379/\d+", url):
        problems.append(f"the example Redis URL {url!r} is not {svc['metadata']['name']}'s")
    return problems


def _token_file_mounted(t: Doc, c: Doc, path: str) -> bool:
    folder, _, file = path.rpartition("/")
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in t["spec"].get("volumes", [])}
    secret = volumes.get(mounts.get(folder), {}).get("secret", {})
    return file in [i["path"] for i in secret.get("items", [])]


def check_api(bundle: Bundle) -> list[str]:
    """The API on 0.0.0.0 with its write token in a mounted Secret (it refuses a
    non-loopback address without one), probed on /healthz (the one route without a token),
    and annotated for Prometheus."""
    t = the(bundle, "Deployment", "framefleet-api")["spec"]["template"]
    c = first_container(t)
    line, problems = argv(c), []
    if line[:2] != ["framefleet", "api"] or "0.0.0.0" not in line:
        problems.append("the API does not run `framefleet api --host 0.0.0.0`")
    token_file = env_of(c).get("FRAMEFLEET_API_TOKEN_FILE", {}).get("value", "")
    if not _token_file_mounted(t, c, token_file):
        problems.append(f"the API's token file {token_file!r} is not in a mounted Secret")
    for probe in ("readinessProbe", "livenessProbe"):
        path = c.get(probe, {}).get("httpGet", {}).get("path")
        if path != "/healthz":
            problems.append(f"the API's {probe} is {path!r}: only /healthz wants no token")
    notes = t.get("metadata", {}).get("annotations", {})
    if notes.get("prometheus.io/scrape") != "true" or notes.get("prometheus.io/path") != "/metrics":
        problems.append("the API's pods lack the Prometheus scrape annotations")
    port = str(notes.get("prometheus.io/port"))
    if not port.isdigit() or int(port) not in {p["containerPort"] for p in c.get("ports", [])}:
        problems.append(f"prometheus.io/port {port} is not the API's port")
    return problems


CHECKS: list[Check] = [
    check_kustomization_lists_every_file,
    check_one_namespace,
    check_images,
    check_head_has_no_cpus,
    check_ray_start_params,
    check_worker_groups,
    check_full_pools_fit_the_groups,
    check_gpu_group,
    check_autoscaler,
    check_reconnect_timeout,
    check_ray_auth,
    check_settings_exist,
    check_cli,
    check_secret_refs,
    check_secrets_are_placeholders,
    check_configmap_refs,
    check_selectors,
    check_no_ray_labels_elsewhere,
    check_coordinator,
    check_shared_memory,
    check_redis,
    check_api,
]


# -- the manifests pass ----------------------------------------------------------------------


def test_the_manifests_are_the_objects_expected() -> None:
    found = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in objects(manifests()))
    assert found == [
        "ConfigMap/framefleet-config",
        "Deployment/framefleet-api",
        "Deployment/framefleet-coordinator",
        "Namespace/framefleet",
        "PodDisruptionBudget/framefleet-api",
        "PodDisruptionBudget/framefleet-coordinator",
        "RayCluster/framefleet",
        "Secret/framefleet-api",
        "Secret/framefleet-ray-auth",
        "Secret/framefleet-redis",
        "Secret/framefleet-s3",
        "Service/framefleet-api",
        "Service/framefleet-redis",
        "StatefulSet/framefleet-redis",
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_core_manifests_are_valid_kubernetes(version: str) -> None:
    docs = [d for d in objects(manifests()) if d["kind"] != "RayCluster"]
    assert [p for d in docs for p in core_problems(d, version)] == []


def test_the_raycluster_is_valid_for_kuberays_crd() -> None:
    assert crd_problems(raycluster(manifests())) == []


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_the_manifests_pass(check: Check) -> None:
    assert check(manifests()) == []


def test_the_crd_copy_is_the_one_its_notice_names() -> None:
    notice = (CRD.parent / "README.md").read_text()
    assert hashlib.sha256(CRD.read_bytes()).hexdigest() in notice
    assert CRD_COMMIT in notice


# -- and the validators and each check refuse a broken copy ----------------------------------


def _walk(doc: Doc, path: str) -> tuple[Any, Any]:
    """The parent node and the last key of a /-separated path: list indexes as numbers,
    "~" for a "/" inside a key ("nvidia.com~gpu")."""
    keys = [int(p) if p.isdigit() else p.replace("~", "/") for p in path.split("/")]
    node: Any = doc
    for key in keys[:-1]:
        node = node[key]
    return node, keys[-1]


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        node, key = _walk(doc, path)
        node[key] = value

    return apply


def _rename(path: str, new: str) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        node, key = _walk(doc, path)
        node[new] = node.pop(key)

    return apply


def _drop(path: str) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        node, key = _walk(doc, path)
        node.pop(key)

    return apply


def _append(path: str, value: Any) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        node, key = _walk(doc, path)
        node[key].append(value)

    return apply


def _env(container: str, name: str, value: str | None) -> Callable[[Doc], None]:
    """Set a container's variable to a value, or drop it (None)."""

    def apply(doc: Doc) -> None:
        node, key = _walk(doc, container)
        env = [e for e in node[key].get("env", []) if e["name"] != name]
        node[key]["env"] = env + ([{"name": name, "value": value}] if value is not None else [])

    return apply


HEAD = "spec/headGroupSpec"
HEAD_C = f"{HEAD}/template/spec/containers/0"
CPU_C = "spec/workerGroupSpecs/0/template/spec/containers/0"
GPU_C = "spec/workerGroupSpecs/1/template/spec/containers/0"
POD = "spec/template/spec"
POD_C = f"{POD}/containers/0"

CRD_BREAKS: dict[str, tuple[Callable[[Doc], None], str]] = {
    "a misspelled field": (
        _rename(f"{HEAD}/rayStartParams", "rayStartParam"),
        "'rayStartParam' was unexpected",
    ),
    "a number where a string is wanted": (
        _set(f"{HEAD}/rayStartParams/num-cpus", 0),
        "0 is not of type 'string'",
    ),
    "replicas as a string": (_set("spec/workerGroupSpecs/0/replicas", "2"), "not of type"),
    "a misspelled field deep in a pod": (_rename(f"{CPU_C}/env", "envs"), "'envs' was unexpected"),
    "a quantity neither int nor string": (
        _set(f"{GPU_C}/resources/limits/nvidia.com~gpu", True),
        "is not valid under any of the given schemas",
    ),
    "a malformed quantity": (_set(f"{GPU_C}/resources/limits/memory", "32 GB"), "does not match"),
    "an int32 out of range": (
        _set("spec/autoscalerOptions/idleTimeoutSeconds", 2**31),
        "is not a 'int32'",
    ),
    "an unknown enum value": (_set("spec/authOptions/mode", "password"), "is not one of"),
    "a port twice in a list-map": (
        _append(f"{HEAD_C}/ports", {"name": "again", "containerPort": 8265}),
        "duplicate item in a list-type map",
    ),
    "a field guarded by a CEL rule": (
        _set("spec/managedBy", "ray.io/kuberay-operator"),
        "CEL rules not checked offline",
    ),
    "a missing required field": (
        _drop("spec/workerGroupSpecs/0/groupName"),
        "'groupName' is a required property",
    ),
    "an unknown metadata field": (_set("metadata/labelz", {}), "'labelz' was unexpected"),
    "another kind": (_set("kind", "RayJob"), "not a ray.io/v1 RayCluster"),
}


@pytest.mark.parametrize("case", sorted(CRD_BREAKS))
def test_the_crd_validator_refuses(case: str) -> None:
    doc = raycluster(manifests())
    mutate, why = CRD_BREAKS[case]
    mutate(doc)
    problems = crd_problems(doc)
    assert any(why in p for p in problems), problems


CORE_BREAKS: dict[str, tuple[str, str, Callable[[Doc], None], str]] = {
    "a misspelled container field": (
        "Deployment",
        "framefleet-api",
        _rename(f"{POD_C}/env", "envv"),
        "'envv' was unexpected",
    ),
    "replicas as a string": (
        "Deployment",
        "framefleet-coordinator",
        _set("spec/replicas", "2"),
        "is not of type 'integer'",
    ),
    "a misspelled probe handler": (
        "Deployment",
        "framefleet-api",
        _rename(f"{POD_C}/readinessProbe/httpGet", "httpGett"),
        "'httpGett' was unexpected",
    ),
    "a Service port without its number": (
        "Service",
        "framefleet-api",
        _drop("spec/ports/0/port"),
        "'port' is a required property",
    ),
    "an unknown StatefulSet field": (
        "StatefulSet",
        "framefleet-redis",
        _set("spec/volumeClaimTemplate", []),
        "'volumeClaimTemplate' was unexpected",
    ),
    "a ConfigMap value that is no string": (
        "ConfigMap",
        "framefleet-config",
        _set("data/FRAMEFLEET_DECODE_ACTORS", 8),
        "is not of type 'string'",
    ),
}


@pytest.mark.parametrize("case", sorted(CORE_BREAKS))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_kubernetes_validator_refuses(case: str, version: str) -> None:
    kind, name, mutate, why = CORE_BREAKS[case]
    doc = the(manifests(), kind, name)
    mutate(doc)
    problems = core_problems(doc, version)
    assert any(why in p for p in problems), problems


def _in(kind: str, name: str | None, mutate: Callable[[Doc], None]) -> Callable[[Bundle], None]:
    return lambda bundle: mutate(the(bundle, kind, name))


def _ray(mutate: Callable[[Doc], None]) -> Callable[[Bundle], None]:
    return _in("RayCluster", None, mutate)


def _api(mutate: Callable[[Doc], None]) -> Callable[[Bundle], None]:
    return _in("Deployment", "framefleet-api", mutate)


def _coordinator(mutate: Callable[[Doc], None]) -> Callable[[Bundle], None]:
    return _in("Deployment", "framefleet-coordinator", mutate)


def _redis(mutate: Callable[[Doc], None]) -> Callable[[Bundle], None]:
    return _in("StatefulSet", "framefleet-redis", mutate)


def _kustomization(mutate: Callable[[Doc], None]) -> Callable[[Bundle], None]:
    return lambda bundle: mutate(kustomization(bundle))


BREAKS: dict[str, tuple[Check, Callable[[Bundle], None], str]] = {
    "a file left out of the kustomization": (
        check_kustomization_lists_every_file,
        _kustomization(lambda k: k["resources"].remove("api.yaml")),
        "api.yaml is not in kustomization.yaml",
    ),
    "a misspelled kustomization field": (
        check_kustomization_lists_every_file,
        _kustomization(_rename("images", "image")),
        "kustomization.yaml: unknown field image",
    ),
    "the placeholder Secrets applied by -k": (
        check_kustomization_lists_every_file,
        _kustomization(_append("resources", SECRETS_FILE)),
        "would overwrite the real Secrets",
    ),
    "an object in another namespace": (
        check_one_namespace,
        _api(_set("metadata/namespace", "default")),
        "Deployment framefleet-api is not in namespace framefleet",
    ),
    "an unpinned image": (
        check_images,
        _redis(_set(f"{POD_C}/image", "valkey/valkey:latest")),
        "neither set once nor pinned",
    ),
    "the CPU build on the GPU workers": (
        check_images,
        _ray(_set(f"{GPU_C}/image", "framefleet:latest")),
        "not the CUDA build",
    ),
    "a head with CPUs": (
        check_head_has_no_cpus,
        _ray(_set(f"{HEAD}/rayStartParams/num-cpus", "4")),
        "the head has num-cpus '4'",
    ),
    "a misspelled ray start option": (
        check_ray_start_params,
        _ray(_rename("spec/workerGroupSpecs/1/rayStartParams/object-store-memory", "object-store")),
        "worker group gpu: rayStartParams object-store is no option of `ray start`",
    ),
    "replicas above maxReplicas": (
        check_worker_groups,
        _ray(_set("spec/workerGroupSpecs/0/replicas", 11)),
        "group cpu: not 0 <= 0 <= 11 <= 4",
    ),
    "a gpu group too small for the inference pool": (
        check_full_pools_fit_the_groups,
        _ray(_set("spec/workerGroupSpecs/1/maxReplicas", 3)),
        "(16 inference, 32 decode actors) do not fit",
    ),
    "no gpu group": (
        check_worker_groups,
        _ray(_set("spec/workerGroupSpecs/1/groupName", "gpus")),
        "not cpu and gpu",
    ),
    "a GPU group without GPUs": (
        check_gpu_group,
        _ray(_drop(f"{GPU_C}/resources/limits/nvidia.com~gpu")),
        "no nvidia.com/gpu limit",
    ),
    "the autoscaler off": (
        check_autoscaler,
        _ray(_set("spec/enableInTreeAutoscaling", False)),
        "no in-tree autoscaler",
    ),
    "a worker group without the reconnect timeout": (
        check_reconnect_timeout,
        _ray(_env(GPU_C, RECONNECT, None)),
        f"worker group gpu: no {RECONNECT}",
    ),
    "Ray's default reconnect timeout": (
        check_reconnect_timeout,
        _ray(_env(CPU_C, RECONNECT, "60")),
        "worker group cpu: RAY_gcs_rpc_server_reconnect_timeout_s=60 is not under",
    ),
    "a coordinator without Ray's token": (
        check_ray_auth,
        _coordinator(_env(POD_C, "RAY_AUTH_TOKEN", None)),
        "RAY_AUTH_TOKEN is not framefleet-ray-auth's auth_token",
    ),
    "Ray's auth off on a worker": (
        check_ray_auth,
        _ray(_env(CPU_C, "RAY_AUTH_MODE", "disabled")),
        "worker group cpu: RAY_AUTH_MODE is not token",
    ),
    "a made-up setting in a container": (
        check_settings_exist,
        _api(_env(POD_C, "FRAMEFLEET_API_TOKENS", "x")),
        "FRAMEFLEET_API_TOKENS is no framefleet setting",
    ),
    "a made-up setting in the ConfigMap": (
        check_settings_exist,
        _in("ConfigMap", None, _set("data/FRAMEFLEET_GPUS_PER_ACTOR", "1")),
        "FRAMEFLEET_GPUS_PER_ACTOR is no framefleet setting",
    ),
    "a subcommand the CLI lacks": (
        check_cli,
        _api(_set(f"{POD_C}/args/1", "serve")),
        "invalid choice: 'serve'",
    ),
    "a flag the CLI lacks": (
        check_cli,
        _api(_set(f"{POD_C}/args/2", "--bind")),
        "unrecognized arguments: --bind",
    ),
    "a $(VAR) the container lacks": (
        check_cli,
        _coordinator(_set(f"{POD_C}/args/3", "$(RAY_HEAD_HOST):6379")),
        "$(RAY_HEAD_HOST) names no variable",
    ),
    "a Secret nobody creates": (
        check_secret_refs,
        _api(_set(f"{POD_C}/env/0/valueFrom/secretKeyRef/name", "redis")),
        "no Secret redis in secrets.example.yaml",
    ),
    "a Secret key that does not exist": (
        check_secret_refs,
        _api(_set(f"{POD}/volumes/0/secret/items/0/key", "write-token")),
        "Secret framefleet-api has no key write-token",
    ),
    "authOptions naming another Secret": (
        check_secret_refs,
        _ray(_set("spec/authOptions/secretName", "framefleet-ray")),
        "RayCluster authOptions: no Secret framefleet-ray",
    ),
    "a real-looking token in the example": (
        check_secrets_are_placeholders,
        lambda b: b[SECRETS_FILE][1]["stringData"].update(token="3f9a0c2b7d1e"),
        "Secret framefleet-api: token is not a REPLACE_ME placeholder",
    ),
    "a ConfigMap that does not exist": (
        check_configmap_refs,
        _coordinator(_set(f"{POD_C}/envFrom/0/configMapRef/name", "framefleet-settings")),
        "no ConfigMap framefleet-settings",
    ),
    "a Service selecting nothing": (
        check_selectors,
        _in("Service", "framefleet-api", _set("spec/selector/app.kubernetes.io~component", "web")),
        "Service framefleet-api selects no pod",
    ),
    "a Service to a port its pods lack": (
        check_selectors,
        _in("Service", "framefleet-redis", _set("spec/ports/0/targetPort", "valkey")),
        "no pod it selects has port valkey",
    ),
    "a PodDisruptionBudget selecting nothing": (
        check_selectors,
        _in(
            "PodDisruptionBudget",
            "framefleet-coordinator",
            _set("spec/selector/matchLabels/app.kubernetes.io~component", "coord"),
        ),
        "PodDisruptionBudget framefleet-coordinator selects no pod",
    ),
    "a coordinator pod with KubeRay's labels": (
        check_no_ray_labels_elsewhere,
        _coordinator(_set("spec/template/metadata/labels/ray.io~cluster", "framefleet")),
        "carries KubeRay's label ray.io/cluster",
    ),
    "a single coordinator": (
        check_coordinator,
        _coordinator(_set("spec/replicas", 1)),
        "one coordinator replica: no standby",
    ),
    "a coordinator joining another head": (
        check_coordinator,
        _coordinator(_env(POD_C, "RAY_HEAD", "raycluster-head-svc")),
        "joins raycluster-head-svc:6379, not framefleet-head-svc:6379",
    ),
    "an object store larger than /dev/shm": (
        check_shared_memory,
        _ray(_set("spec/workerGroupSpecs/1/rayStartParams/object-store-memory", "9000000000")),
        "worker group gpu: /dev/shm is smaller",
    ),
    "/dev/shm on disk": (
        check_shared_memory,
        _coordinator(_drop(f"{POD}/volumes/0/emptyDir/medium")),
        "/dev/shm is not a memory-backed emptyDir",
    ),
    "Redis without AOF": (
        check_redis,
        _redis(_set(f"{POD_C}/args/4", "no")),
        "--appendonly is 'no'",
    ),
    "Redis that evicts": (
        check_redis,
        _redis(_set(f"{POD_C}/args/10", "allkeys-lru")),
        "--maxmemory-policy is 'allkeys-lru'",
    ),
    "Redis's data off its volume": (
        check_redis,
        _redis(_set(f"{POD_C}/args/2", "/tmp")),
        "--dir is not on a persistent volume claim",
    ),
    "a Redis password in the manifest": (
        check_redis,
        _redis(_set(f"{POD_C}/args/12", "hunter2")),
        "--requirepass does not come from a Secret",
    ),
    "the API probed on /readyz": (
        check_api,
        _api(_set(f"{POD_C}/readinessProbe/httpGet/path", "/readyz")),
        "readinessProbe is '/readyz'",
    ),
    "the API's token file not mounted": (
        check_api,
        _api(_set(f"{POD}/volumes/0/secret/items/0/path", "write")),
        "token file '/etc/framefleet/api/token' is not in a mounted Secret",
    ),
    "the API scraped on another port": (
        check_api,
        _api(_set("spec/template/metadata/annotations/prometheus.io~port", "9090")),
        "prometheus.io/port 9090 is not the API's port",
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKS))
def test_each_check_refuses_a_broken_copy(case: str) -> None:
    check, mutate, why = BREAKS[case]
    bundle = manifests()
    assert check(bundle) == [], "the check passes on the real manifests first"
    mutate(bundle)
    problems = check(bundle)
    assert any(why in p for p in problems), problems


def test_every_check_is_shown_refusing() -> None:
    assert {check for check, _, _ in BREAKS.values()} == set(CHECKS)
