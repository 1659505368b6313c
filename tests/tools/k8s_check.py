#!/usr/bin/env python3
"""Independent checks of the injector's output, with PyYAML and python-json-patch (not
airlock's own YAML or patch code).

    k8s_check.py pods FILE            -> checks every injected pod template in FILE (a
                                         YAML stream); prints {"Kind ns/name": identity}
    k8s_check.py patch REVIEW OBJECT  -> applies REVIEW's base64 JSON Patch to the JSON
                                         file OBJECT; prints the result
    k8s_check.py yaml-json FILE       -> the first document of FILE as JSON
    k8s_check.py data FILE NAME KEY   -> data[KEY] of the ConfigMap NAME in FILE
    k8s_check.py same IN OUT          -> checks that, read as kubectl reads YAML (1.1),
                                         OUT is IN plus airlock's additions only
"""
import base64
import json
import sys

import jsonpatch
import yaml

TEMPLATES = {
    "Pod": [],
    "Deployment": ["spec", "template"],
    "StatefulSet": ["spec", "template"],
    "DaemonSet": ["spec", "template"],
    "ReplicaSet": ["spec", "template"],
    "Job": ["spec", "template"],
    "CronJob": ["spec", "jobTemplate", "spec", "template"],
}


def fail(where, message):
    sys.exit(f"{where}: {message}")


def check_template(where, template):
    spec = template["spec"]
    init = spec.get("initContainers", [])
    names = [c["name"] for c in init]
    if names[:2] != ["airlock-init", "airlock-proxy"]:
        fail(where, f"init containers start {names}")
    if names.count("airlock-proxy") != 1 or names.count("airlock-init") != 1:
        fail(where, f"injected twice: {names}")
    capture, proxy = init[0], init[1]

    context = capture["securityContext"]
    if context["capabilities"] != {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}:
        fail(where, f"capture capabilities {context['capabilities']}")
    if context.get("privileged") is not False or context.get("allowPrivilegeEscalation") is not False:
        fail(where, "the capture container may be privileged")
    if capture["args"][0] != "init-capture":
        fail(where, f"capture args {capture['args']}")

    if proxy.get("restartPolicy") != "Always":
        fail(where, "the sidecar is not a native sidecar")
    context = proxy["securityContext"]
    expected = {
        "runAsUser": 1337,
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
    }
    for key, value in expected.items():
        if context.get(key) != value:
            fail(where, f"sidecar securityContext.{key} = {context.get(key)!r}")
    if context["capabilities"] != {"drop": ["ALL"]} or "add" in context["capabilities"]:
        fail(where, f"sidecar capabilities {context['capabilities']}")
    for kind in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(proxy["resources"][kind]):
            fail(where, f"sidecar resources.{kind}")
    for probe, path in (("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/live")):
        if proxy[probe]["httpGet"] != {"path": path, "port": 15020}:
            fail(where, f"{probe} {proxy[probe]}")
    if not all(m.get("readOnly") is True for m in proxy["volumeMounts"]):
        fail(where, "a sidecar mount is writable")

    volumes = {v["name"]: v for v in spec["volumes"]}
    token = volumes["airlock-token"]["projected"]["sources"][0]["serviceAccountToken"]
    if token["audience"] != "airlock-ca" or token["expirationSeconds"] > 86400:
        fail(where, f"token volume {token}")
    for name, config_map in (("airlock-ca-bundle", "airlock-ca-bundle"), ("airlock-policies", "airlock-policies")):
        if volumes[name]["configMap"]["name"] != config_map:
            fail(where, f"volume {name}")
    annotations = template["metadata"]["annotations"]
    config = yaml.safe_load(annotations["airlock.dev/sidecar-config"])
    app_probes = config["admin"].get("app_probes", {})
    for container in spec["containers"]:
        for kind, field in PROBES.items():
            handler = container.get(field, {}).get("httpGet", {})
            name = f"{container['name']}/{kind}"
            if handler.get("port") == 15020:
                if handler.get("path") != f"/app-health/{name}" or name not in app_probes:
                    fail(where, f"{field} of {container['name']} points at the sidecar, which does not run it")
    if proxy["args"][3] != "--config-sha256" or len(proxy["args"][4]) != 64:
        fail(where, f"the sidecar's config is not pinned: {proxy['args']}")
    if config["identity"]["token_file"] != "/var/run/secrets/airlock/token":
        fail(where, "the sidecar reads another token file")
    return annotations["airlock.dev/identity"]


def pods(path):
    found = {}
    with open(path) as stream:
        for document in yaml.safe_load_all(stream):
            if not document or document.get("kind") not in TEMPLATES:
                continue
            template = document
            for key in TEMPLATES[document["kind"]]:
                template = template[key]
            metadata = document["metadata"]
            name = metadata.get("name") or metadata.get("generateName")
            where = f"{document['kind']} {metadata.get('namespace', '-')}/{name}"
            annotations = (template.get("metadata") or {}).get("annotations") or {}
            if "airlock.dev/identity" in annotations:
                found[where] = check_template(where, template)
    print(json.dumps(found, sort_keys=True))


AIRLOCK_CONTAINERS = {"airlock-init", "airlock-proxy"}
AIRLOCK_ANNOTATIONS = {"airlock.dev/identity", "airlock.dev/sidecar-config", "airlock.dev/app-probes"}
PROBES = {"liveness": "livenessProbe", "readiness": "readinessProbe", "startup": "startupProbe"}


def without_injection(template, original):
    """`template` minus what the injector adds, shaped like `original`."""
    spec = template["spec"]
    for key in ("initContainers", "volumes"):
        kept = [
            item for item in spec.get(key, [])
            if item["name"] not in AIRLOCK_CONTAINERS and not item["name"].startswith("airlock-")
        ]
        if kept or key in original.get("spec", {}):
            spec[key] = kept
        else:
            spec.pop(key, None)
    metadata = template.get("metadata", {})
    moved = json.loads(metadata.get("annotations", {}).get("airlock.dev/app-probes", "{}"))
    for name, handler in moved.items():
        container_name, kind = name.split("/")
        for container in spec["containers"]:
            if container["name"] == container_name:
                container[PROBES[kind]].pop("httpGet")
                container[PROBES[kind]].update(handler)
    annotations = {k: v for k, v in metadata.get("annotations", {}).items() if k not in AIRLOCK_ANNOTATIONS}
    original_metadata = original.get("metadata") or {}
    if annotations or "annotations" in original_metadata:
        metadata["annotations"] = annotations
    else:
        metadata.pop("annotations", None)
    if not metadata and "metadata" not in original:
        template.pop("metadata", None)
    return template


def same(in_path, out_path):
    with open(in_path) as f:
        before = [d for d in yaml.safe_load_all(f)]
    with open(out_path) as f:
        after = [d for d in yaml.safe_load_all(f)]
    if len(before) != len(after):
        fail(out_path, f"{len(after)} documents, not {len(before)}")
    for index, (old, new) in enumerate(zip(before, after)):
        if new and new.get("kind") in TEMPLATES:
            old_template, new_template = old, new
            for key in TEMPLATES[new["kind"]]:
                old_template, new_template = old_template[key], new_template[key]
            without_injection(new_template, old_template)
        if old != new:
            fail(out_path, f"document {index} differs:\n{json.dumps(old, sort_keys=True)}\n{json.dumps(new, sort_keys=True)}")
    print("same")


def patch(review_path, object_path):
    with open(review_path) as f:
        response = json.load(f)["response"]
    with open(object_path) as f:
        target = json.load(f)
    operations = json.loads(base64.b64decode(response["patch"]))
    print(json.dumps(jsonpatch.apply_patch(target, operations)))


def yaml_json(path):
    with open(path) as f:
        print(json.dumps(next(yaml.safe_load_all(f))))


def data(path, name, key):
    with open(path) as f:
        for document in yaml.safe_load_all(f):
            if document and document.get("kind") == "ConfigMap" and document["metadata"]["name"] == name:
                sys.stdout.write(document["data"][key])
                return
    sys.exit(f"no ConfigMap {name} in {path}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"pods": pods, "patch": patch, "yaml-json": yaml_json, "data": data, "same": same}[command](*args)
