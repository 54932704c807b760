#!/usr/bin/env python3
"""Validates rendered manifests (the output of `kubectl kustomize`), offline.

    check.py --kubernetes-version 1.33.0 [--kubernetes-version ...] [--allow-secrets] NAME=FILE...

Every object must have a schema, or the check fails:
- Kubernetes kinds: kubernetes-validate's strict schemas (unknown fields are errors), once per
  version given;
- custom resources: the schemas beside this file (KEDA's ScaledObject and TriggerAuthentication,
  the RabbitMQ operator's RabbitmqCluster), which refer to the same Kubernetes definitions.

Then what schemas cannot see, across objects:
- every pod template is hardened: non-root, read-only root filesystem, no privilege escalation,
  all capabilities dropped, seccomp RuntimeDefault, CPU and memory requests and limits;
- Herald's services probe /healthz (liveness) and /readyz (readiness) on their admin port, run an
  image an overlay pinned, and the dispatcher's grace period outlasts HERALD_SHUTDOWN_GRACE;
- references resolve: ConfigMaps, Service and PDB selectors and ports, network-policy selectors,
  autoscaler targets (one autoscaler per workload, which sets no replicas of its own), a
  ScaledObject's TriggerAuthentication and its queue ({HERALD_NAMESPACE}.dispatch);
- a default-deny NetworkPolicy exists, every object shares one namespace, every Herald workload
  has a PodDisruptionBudget, and no Secret is rendered unless --allow-secrets (the dev overlay's
  throwaway one).
"""

import argparse
import json
import pathlib
import re
import sys

import importlib_resources
import jsonschema
import yaml
from kubernetes_validate import utils as kubernetes_validate
from referencing import Registry, Resource

HERE = pathlib.Path(__file__).resolve().parent
CUSTOM_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda-v1alpha1.json",
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "rabbitmqcluster-rabbitmq-v1beta1.json",
}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
HERALD_ADMIN_PORTS = {"herald-ingress": 9090, "herald-dispatcher": 9091}


class Render:
    """One rendered overlay and the problems found in it."""

    def __init__(self, name, objects):
        self.name = name
        self.objects = objects
        self.problems = []

    def problem(self, obj, message):
        self.problems.append(f"{self.name}: {ident(obj)}: {message}")

    def of_kind(self, *kinds):
        return [o for o in self.objects if o.get("kind") in kinds]

    def find(self, kind, name):
        return next((o for o in self.of_kind(kind) if meta(o).get("name") == name), None)


def ident(obj):
    return f"{obj.get('kind', '?')}/{meta(obj).get('name', '?')}" if obj else "render"


def meta(obj):
    return obj.get("metadata") or {}


# --- schemas ---------------------------------------------------------------------------------


def definitions(version):
    """kubernetes-validate's strict definitions for one version, for the custom schemas' $refs."""
    path = (
        importlib_resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{version}-local-strict"
        / "_definitions.json"
    )
    if not path.is_file():
        sys.exit(f"check.py: kubernetes-validate has no schemas for Kubernetes {version}")
    return Resource.from_contents(json.loads(path.read_text()))


def check_schemas(render, versions):
    for version in versions:
        registry = definitions(version) @ Registry()
        for obj in render.objects:
            key = (obj.get("apiVersion"), obj.get("kind"))
            if key in CUSTOM_SCHEMAS:
                schema = json.loads((HERE / CUSTOM_SCHEMAS[key]).read_text())
                validator = jsonschema.Draft202012Validator(schema, registry=registry)
                for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.path)):
                    path = ".".join(str(p) for p in error.path)
                    render.problem(obj, f"{path}: {error.message} ({CUSTOM_SCHEMAS[key]})")
                continue
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                render.problem(obj, f"{path}: {error.message} (Kubernetes {version}, strict)")
            except kubernetes_validate.SchemaNotFoundError:
                render.problem(obj, f"no schema for {key[0]} {key[1]}: add one to {HERE.name}/")


# --- selectors and pod templates --------------------------------------------------------------


def pod_templates(render):
    """(owner, pod spec, pod labels) of every workload, plus the pods an operator will create."""
    for obj in render.of_kind(*WORKLOADS):
        spec = obj.get("spec") or {}
        if obj["kind"] == "CronJob":
            spec = spec.get("jobTemplate", {}).get("spec", {})
        template = spec.get("template") or {}
        yield obj, template.get("spec") or {}, meta(template).get("labels") or {}
    for cluster in render.of_kind("RabbitmqCluster"):
        # The labels the RabbitMQ cluster operator gives its pods.
        labels = {
            "app.kubernetes.io/name": meta(cluster)["name"],
            "app.kubernetes.io/component": "rabbitmq",
            "app.kubernetes.io/part-of": "rabbitmq",
        }
        yield cluster, None, labels


def selects(selector, labels):
    """Whether a label selector (matchLabels/matchExpressions, or a plain map) matches labels."""
    if selector is None:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        selector = {"matchLabels": selector}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def empty_selector(selector):
    return not (selector or {}).get("matchLabels") and not (selector or {}).get("matchExpressions")


def matching(render, selector):
    return [
        (owner, spec) for owner, spec, labels in pod_templates(render) if selects(selector, labels)
    ]


# --- checks across objects ------------------------------------------------------------------


def check_hardening(render):
    for owner, spec, _ in pod_templates(render):
        if spec is None:
            continue  # created by an operator from a custom resource
        pod_sc = spec.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                render.problem(owner, f"{flag} is set")
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            where = f"container {c['name']}"
            sc = c.get("securityContext") or {}
            merged = {**pod_sc, **sc}
            if merged.get("runAsNonRoot") is not True or merged.get("runAsUser") == 0:
                render.problem(owner, f"{where} may run as root (runAsNonRoot)")
            if sc.get("readOnlyRootFilesystem") is not True:
                render.problem(owner, f"{where}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                render.problem(owner, f"{where}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                render.problem(owner, f"{where} is privileged")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                render.problem(owner, f"{where} does not drop ALL capabilities")
            if (merged.get("seccompProfile") or {}).get("type") not in (
                "RuntimeDefault",
                "Localhost",
            ):
                render.problem(owner, f"{where} has no seccomp profile")
            resources = c.get("resources") or {}
            for bound in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(bound) or {}):
                        render.problem(owner, f"{where} has no {resource} {bound[:-1]}")


def config_value(render, container, variable, default):
    """A variable's value in a container: env first, then its envFrom ConfigMaps."""
    for env in container.get("env") or []:
        if env["name"] == variable and "value" in env:
            return env["value"]
    value = default
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        config = render.find("ConfigMap", ref["name"]) if ref else None
        if config and variable in (config.get("data") or {}):
            value = config["data"][variable]
    return value


def seconds(duration):
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration.strip())
    if not match:
        return None
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2]]


def check_herald(render):
    for deployment in render.of_kind("Deployment"):
        name = meta(deployment)["name"]
        spec = deployment["spec"]["template"]["spec"]
        for c in spec["containers"]:
            image = c.get("image", "")
            if (
                image.split("/")[-1].startswith("herald")
                and ":" not in image.split("/")[-1]
                and "@" not in image
            ):
                render.problem(
                    deployment, f"image {image!r} has no tag or digest: set images: in the overlay"
                )
        if name not in HERALD_ADMIN_PORTS:
            continue
        c = spec["containers"][0]
        addr = config_value(render, c, "HERALD_ADMIN_ADDR", f"0.0.0.0:{HERALD_ADMIN_PORTS[name]}")
        admin = int(addr.rsplit(":", 1)[1])
        named = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        for probe, path in (
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ):
            get = (c.get(probe) or {}).get("httpGet")
            if not get:
                render.problem(deployment, f"{probe} is not an HTTP GET on the admin port")
                continue
            port = named.get(get["port"], get["port"])
            if get.get("path") != path or port != admin:
                render.problem(
                    deployment,
                    f"{probe} probes {get.get('path')} on {port}, not {path} on the admin port {admin}",
                )
        if name == "herald-dispatcher":
            raw = config_value(render, c, "HERALD_SHUTDOWN_GRACE", "25s")
            grace = seconds(raw)
            period = spec.get("terminationGracePeriodSeconds", 30)
            if grace is None:
                render.problem(deployment, f"HERALD_SHUTDOWN_GRACE {raw!r} is not a plain duration")
            elif period <= grace:
                render.problem(
                    deployment,
                    f"terminationGracePeriodSeconds {period} does not outlast HERALD_SHUTDOWN_GRACE {raw}",
                )
        if not any(
            selects(
                pdb["spec"].get("selector"),
                deployment["spec"]["template"]["metadata"].get("labels", {}),
            )
            for pdb in render.of_kind("PodDisruptionBudget")
        ):
            render.problem(deployment, "no PodDisruptionBudget covers its pods")


def check_references(render, allow_secrets):
    secrets_needed = {}
    for owner, spec, _ in pod_templates(render):
        if spec is None:
            continue
        refs = []
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            for source in c.get("envFrom") or []:
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source:
                        refs.append((kind, source[key]["name"], None, source[key].get("optional")))
            for env in c.get("env") or []:
                value_from = env.get("valueFrom") or {}
                for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if key in value_from:
                        ref = value_from[key]
                        refs.append((kind, ref["name"], ref["key"], ref.get("optional")))
        for volume in spec.get("volumes") or []:
            if "configMap" in volume:
                refs.append(
                    (
                        "ConfigMap",
                        volume["configMap"]["name"],
                        None,
                        volume["configMap"].get("optional"),
                    )
                )
            if "secret" in volume:
                refs.append(
                    (
                        "Secret",
                        volume["secret"]["secretName"],
                        None,
                        volume["secret"].get("optional"),
                    )
                )
        for kind, name, key, optional in refs:
            target = render.find(kind, name)
            if kind == "Secret" and not allow_secrets:
                secrets_needed.setdefault(name, set()).update([key] if key and not optional else [])
                continue
            if target is None:
                if not optional:
                    render.problem(owner, f"refers to {kind} {name}, which is not in the render")
                continue
            data = {**(target.get("data") or {}), **(target.get("stringData") or {})}
            if key and key not in data and not optional:
                render.problem(owner, f"refers to key {key} of {kind} {name}, which it lacks")

    for service in render.of_kind("Service"):
        selector = service["spec"].get("selector")
        if not selector:
            continue
        pods = matching(render, selector)
        if not pods:
            render.problem(service, "its selector matches no pod template")
        for port in service["spec"].get("ports") or []:
            target = port.get("targetPort", port["port"])
            for owner, spec in pods:
                if spec is None:
                    continue
                ports = [p for c in spec["containers"] for p in c.get("ports") or []]
                if not any(target in (p.get("name"), p["containerPort"]) for p in ports):
                    render.problem(service, f"targetPort {target} is not a port of {ident(owner)}")

    for ingress in render.of_kind("Ingress"):
        for rule in ingress["spec"].get("rules") or []:
            for path in (rule.get("http") or {}).get("paths") or []:
                backend = path["backend"].get("service")
                if not backend:
                    continue
                service = render.find("Service", backend["name"])
                port = backend.get("port") or {}
                if service is None:
                    render.problem(
                        ingress, f"routes to Service {backend['name']}, which is not in the render"
                    )
                elif not any(
                    port.get("name") == p.get("name") or port.get("number") == p["port"]
                    for p in service["spec"].get("ports") or []
                ):
                    render.problem(
                        ingress, f"routes to port {port} that Service {backend['name']} lacks"
                    )

    for pdb in render.of_kind("PodDisruptionBudget"):
        if not matching(render, pdb["spec"].get("selector")):
            render.problem(pdb, "its selector matches no pod template")

    default_deny = False
    for policy in render.of_kind("NetworkPolicy"):
        spec = policy["spec"]
        if empty_selector(spec.get("podSelector")):
            if (
                set(spec.get("policyTypes") or []) >= {"Ingress", "Egress"}
                and not spec.get("ingress")
                and not spec.get("egress")
            ):
                default_deny = True
        elif not matching(render, spec["podSelector"]):
            render.problem(policy, "its podSelector matches no pod template")
        for rule in (spec.get("ingress") or []) + (spec.get("egress") or []):
            for peer in (rule.get("from") or []) + (rule.get("to") or []):
                if (
                    "podSelector" in peer
                    and "namespaceSelector" not in peer
                    and not empty_selector(peer["podSelector"])
                ):
                    if not matching(render, peer["podSelector"]):
                        render.problem(
                            policy, f"peer {peer['podSelector']} matches no pod template"
                        )
    if render.of_kind("Deployment") and not default_deny:
        render.problem(
            None, "no default-deny NetworkPolicy (empty podSelector, Ingress and Egress, no rules)"
        )
    return secrets_needed


def check_autoscaling(render):
    config = next(
        (c for c in render.of_kind("ConfigMap") if meta(c)["name"].startswith("herald-config")),
        None,
    )
    herald_ns = ((config or {}).get("data") or {}).get("HERALD_NAMESPACE", "herald")
    scalers = {}
    for scaler in render.of_kind("HorizontalPodAutoscaler", "ScaledObject"):
        ref = scaler["spec"]["scaleTargetRef"]
        kind = ref.get("kind", "Deployment")
        target = render.find(kind, ref["name"])
        if target is None:
            render.problem(scaler, f"scales {kind} {ref['name']}, which is not in the render")
            continue
        scalers.setdefault(ident(target), []).append(ident(scaler))
        if "replicas" in target["spec"]:
            render.problem(
                target, f"sets replicas, which every apply would reset under {ident(scaler)}"
            )
    for target, owners in scalers.items():
        if len(owners) > 1:
            render.problem(None, f"{target} has more than one autoscaler: {', '.join(owners)}")
    for scaled in render.of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            auth = None
            ref = trigger.get("authenticationRef")
            if ref:
                auth = render.find(ref.get("kind", "TriggerAuthentication"), ref["name"])
                if auth is None:
                    render.problem(scaled, f"authenticationRef {ref['name']} is not in the render")
            if trigger["type"] != "rabbitmq":
                continue
            metadata = trigger["metadata"]
            params = {
                r["parameter"]
                for r in ((auth or {}).get("spec") or {}).get("secretTargetRef") or []
            }
            if not ({"host", "hostFromEnv"} & set(metadata) or "host" in params):
                render.problem(
                    scaled, "the rabbitmq trigger has no host (metadata or TriggerAuthentication)"
                )
            if scaled["spec"]["scaleTargetRef"]["name"] == "herald-dispatcher":
                want = f"{herald_ns}.dispatch"
                if metadata.get("queueName") != want:
                    render.problem(
                        scaled,
                        f"queueName {metadata.get('queueName')!r} is not the dispatch queue {want!r}",
                    )


def check_misc(render, allow_secrets):
    namespaces = {meta(o).get("namespace") for o in render.objects if o.get("kind") != "Namespace"}
    if len(namespaces) > 1:
        render.problem(None, f"objects span namespaces {sorted(map(str, namespaces))}")
    if not allow_secrets:
        for secret in render.of_kind("Secret"):
            render.problem(
                secret, "a Secret is rendered: secrets are created in the cluster, never committed"
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", action="append", required=True)
    parser.add_argument("--allow-secrets", action="store_true")
    parser.add_argument("renders", nargs="+", metavar="NAME=FILE")
    args = parser.parse_args()
    failed = False
    for item in args.renders:
        name, _, path = item.partition("=")
        objects = [o for o in yaml.safe_load_all(pathlib.Path(path).read_text()) if o]
        render = Render(name, objects)
        if not objects:
            render.problem(None, "the render is empty")
        check_schemas(render, args.kubernetes_version)
        check_hardening(render)
        check_herald(render)
        needed = check_references(render, args.allow_secrets)
        check_autoscaling(render)
        check_misc(render, args.allow_secrets)
        for line in render.problems:
            print(f"ERROR {line}")
        failed |= bool(render.problems)
        custom = sum(1 for o in objects if (o.get("apiVersion"), o.get("kind")) in CUSTOM_SCHEMAS)
        status = f"{len(render.problems)} problem(s)" if render.problems else "valid"
        print(
            f"{name}: {len(objects)} objects ({custom} custom resources), "
            f"Kubernetes {', '.join(args.kubernetes_version)}: {status}"
        )
        for secret, keys in sorted(needed.items()):
            print(
                f"  expects Secret {secret} in the cluster, keys: {', '.join(sorted(keys)) or '(any)'}"
            )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
