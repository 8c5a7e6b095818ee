#!/usr/bin/env python3
"""tests/deploy/manifests.py -- helpers of the deploy tests for rendered chart manifests.

  manifests.py crds FILE          validate every monitoring.coreos.com/v1 object in FILE (the
                                  kinds kubernetes-validate has no schema for) against the
                                  vendored Prometheus Operator CRDs in tests/deploy/crds,
                                  strictly: unknown fields are errors, as kubernetes-validate's
                                  --strict does for built-in kinds.
  manifests.py rules FILE OUT     write the `spec` of the PrometheusRule in FILE to OUT as a
                                  Prometheus rules file (for promtool check/test rules).
  manifests.py files FILE DIR     write every ConfigMap key in FILE to DIR/<ConfigMap>/<key>
                                  (for `circus-warden config check` / `policy check`).

Runs with the deploy tools venv (PyYAML and jsonschema come with kubernetes-validate).
"""

import copy
import pathlib
import sys

import jsonschema
import yaml

CRD_DIR = pathlib.Path(__file__).resolve().parent / "crds"


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def strict(schema):
    """Closes every object schema that lists properties and does not say otherwise."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


METADATA_SCHEMA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


def crd_schemas():
    schemas = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in load_docs(path):
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                api = f"{group}/{version['name']}"
                schema = strict(version["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = METADATA_SCHEMA
                schemas[(api, kind)] = schema
    return schemas


def cmd_crds(path):
    schemas = crd_schemas()
    failures = checked = 0
    for doc in load_docs(path):
        api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        if not api.startswith("monitoring.coreos.com/"):
            continue
        name = doc.get("metadata", {}).get("name")
        schema = schemas.get((api, kind))
        if schema is None:
            print(f"ERROR {path}: no vendored CRD for {kind} {api}")
            failures += 1
            continue
        errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
        for e in errors:
            where = ".".join(str(p) for p in e.path) or "(root)"
            print(f"ERROR {path}: {kind}/{name}: {where}: {e.message}")
        failures += bool(errors)
        checked += 1
        if not errors:
            print(f"ok {kind}/{name} against the {api} CRD schema (strict)")
    if checked == 0:
        print(f"note: {path} has no monitoring.coreos.com objects")
    return 1 if failures else 0


def cmd_rules(path, out):
    rules = [d for d in load_docs(path) if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        print(f"ERROR {path}: expected one PrometheusRule, found {len(rules)}")
        return 1
    pathlib.Path(out).write_text(
        "# Extracted from the chart's rendered PrometheusRule (spec) by tests/deploy/manifests.py.\n"
        + yaml.safe_dump(rules[0]["spec"], sort_keys=False, width=1000),
        encoding="utf-8",
    )
    alerts = [r["alert"] for g in rules[0]["spec"]["groups"] for r in g["rules"] if "alert" in r]
    print(f"wrote {out}: {len(alerts)} alerts: {', '.join(alerts)}")
    return 0


def cmd_files(path, out):
    for doc in load_docs(path):
        if doc.get("kind") != "ConfigMap":
            continue
        target = pathlib.Path(out) / doc["metadata"]["name"]
        target.mkdir(parents=True, exist_ok=True)
        for key, text in (doc.get("data") or {}).items():
            (target / key).write_text(text, encoding="utf-8")
            print(target / key)
    return 0


def main(argv):
    if len(argv) == 3 and argv[1] == "crds":
        return cmd_crds(argv[2])
    if len(argv) == 4 and argv[1] == "rules":
        return cmd_rules(argv[2], argv[3])
    if len(argv) == 4 and argv[1] == "files":
        return cmd_files(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
