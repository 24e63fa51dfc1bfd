#!/usr/bin/env python3
"""Checks the alert rules, their tests and runbooks, and the Kubernetes monitoring component.

1. Every alert in deploy/prometheus/rules/*.rules.yml has the annotations `summary`,
   `description` and `runbook_url`; runbook_url is docs/runbooks/<alert-in-kebab-case>.md and
   that page exists; no runbook page is left without its alert.
2. Every alert has a promtool test case where it fires (exp_alerts not empty) and one where it
   does not (exp_alerts empty) in deploy/prometheus/tests/*.test.yml.
3. k8s/components/monitoring (given rendered, as YAML): the PrometheusRule holds exactly the
   groups of the rules files, and the PodMonitor and PrometheusRule fit the schema of the
   Prometheus Operator's monitoring.coreos.com/v1 CRDs (the subset used here, unknown fields
   rejected: kubernetes-validate knows no CRDs); the PodMonitor sets `service` from
   app.kubernetes.io/name and scrapes the `ops` port (server.ops_listen).

Usage: check-rules.py [--root DIR] [--component RENDERED_YAML] [--write-prometheusrule]
Exit 0 when everything holds, 1 otherwise; every problem is printed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
STR = {"type": "string", "minLength": 1}
STRMAP = {"type": "object", "additionalProperties": {"type": "string"}}
DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$"}
META = {"type": "object", "required": ["name"], "properties": {
    "name": STR, "namespace": STR, "labels": STRMAP, "annotations": STRMAP},
    "additionalProperties": False}
SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": STRMAP,
    "matchExpressions": {"type": "array", "items": {
        "type": "object", "required": ["key", "operator"], "additionalProperties": False,
        "properties": {"key": STR, "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                       "values": {"type": "array", "items": {"type": "string"}}}}}}}
RELABEL = {"type": "object", "additionalProperties": False, "properties": {
    "sourceLabels": {"type": "array", "items": STR}, "separator": {"type": "string"},
    "targetLabel": STR, "regex": {"type": "string"}, "modulus": {"type": "integer"},
    "replacement": {"type": "string"},
    "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                        "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                        "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal",
                        "KeepEqual", "dropequal", "DropEqual"]}}}
# The subset of monitoring.coreos.com/v1 (Prometheus Operator v0.7x CRDs) this repo uses.
SCHEMAS = {
    "PodMonitor": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
                   "additionalProperties": False, "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"},
        "metadata": META,
        "spec": {"type": "object", "required": ["selector", "podMetricsEndpoints"],
                 "additionalProperties": False, "properties": {
            "jobLabel": STR, "podTargetLabels": {"type": "array", "items": STR},
            "selector": SELECTOR,
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": STR}}},
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "port": STR, "path": STR, "scheme": {"enum": ["http", "https"]},
                    "interval": DURATION, "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
                    "relabelings": {"type": "array", "items": RELABEL},
                    "metricRelabelings": {"type": "array", "items": RELABEL}}}}}}}},
    "PrometheusRule": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
                       "additionalProperties": False, "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": META,
        "spec": {"type": "object", "additionalProperties": False, "properties": {
            "groups": {"type": "array", "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {"name": STR, "interval": DURATION, "rules": {"type": "array", "items": {
                    "type": "object", "required": ["expr"], "additionalProperties": False,
                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                    "properties": {"alert": STR, "record": STR, "expr": STR, "for": DURATION,
                                   "keep_firing_for": DURATION,
                                   "labels": STRMAP, "annotations": STRMAP}}}}}}}}}},
}


def kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def load_rules(root: Path) -> tuple[list, dict]:
    groups, alerts = [], {}
    for path in sorted((root / "deploy/prometheus/rules").glob("*.rules.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in doc.get("groups", []):
            groups.append(group)
            for rule in group.get("rules", []):
                if "alert" in rule:
                    alerts[rule["alert"]] = rule
    return groups, alerts


def check_annotations(root: Path, alerts: dict, errors: list[str]) -> None:
    for name, rule in alerts.items():
        annotations = rule.get("annotations") or {}
        for key in ("summary", "description", "runbook_url"):
            if not str(annotations.get(key, "")).strip():
                errors.append(f"alert {name}: no `{key}` annotation")
        wanted = f"docs/runbooks/{kebab(name)}.md"
        url = annotations.get("runbook_url")
        if url and url != wanted:
            errors.append(f"alert {name}: runbook_url {url!r}, expected {wanted!r}")
        if not (root / wanted).is_file():
            errors.append(f"alert {name}: no runbook page {wanted}")
    for page in sorted((root / "docs/runbooks").glob("ghost-*.md")):
        if page.stem not in {kebab(name) for name in alerts}:
            errors.append(f"{page.relative_to(root)}: no alert of that name")


def check_tests(root: Path, alerts: dict, errors: list[str]) -> None:
    fires, silent = set(), set()
    for path in sorted((root / "deploy/prometheus/tests").glob("*.test.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for test in doc.get("tests", []):
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case.get("alertname"))
    for name in alerts:
        if name not in fires:
            errors.append(f"alert {name}: no promtool test where it fires")
        if name not in silent:
            errors.append(f"alert {name}: no promtool test where it does not fire")


def check_component(rendered: Path, groups: list, errors: list[str]) -> None:
    docs = [d for d in yaml.safe_load_all(rendered.read_text(encoding="utf-8")) if d]
    kinds = {}
    for doc in docs:
        kind = doc.get("kind")
        if kind not in SCHEMAS:
            errors.append(f"{rendered.name}: unexpected kind {kind}")
            continue
        kinds[kind] = doc
        for error in jsonschema.Draft7Validator(SCHEMAS[kind]).iter_errors(doc):
            where = "/".join(str(p) for p in error.absolute_path) or "(top)"
            errors.append(f"{kind} {doc.get('metadata', {}).get('name')}: {where}: {error.message}")
    for kind in SCHEMAS:
        if kind not in kinds:
            errors.append(f"{rendered.name}: no {kind}")
    rule = kinds.get("PrometheusRule")
    if rule and (rule.get("spec") or {}).get("groups") != groups:
        errors.append("the PrometheusRule's groups differ from deploy/prometheus/rules/*.rules.yml "
                      "(regenerate: check-rules.py --write-prometheusrule)")
    monitor = kinds.get("PodMonitor")
    if monitor:
        for endpoint in monitor["spec"].get("podMetricsEndpoints", []):
            relabel = endpoint.get("relabelings", [])
            if not any(r.get("targetLabel") == "service" and r.get("sourceLabels") ==
                       ["__meta_kubernetes_pod_label_app_kubernetes_io_name"] for r in relabel):
                errors.append("PodMonitor: an endpoint does not set `service` from app.kubernetes.io/name")
            if endpoint.get("port") != "ops" or endpoint.get("path") != "/metrics":
                errors.append("PodMonitor: an endpoint does not scrape port ops at /metrics")


def write_prometheusrule(root: Path, groups: list) -> None:
    class Dumper(yaml.SafeDumper):
        pass
    Dumper.add_representer(str, lambda d, s: d.represent_scalar(
        "tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))
    doc = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
           "metadata": {"name": "ghost-runner", "labels": {"app.kubernetes.io/part-of": "ghost-runner",
                                                          "release": "kube-prometheus-stack"}},
           "spec": {"groups": groups}}
    head = ("# The alert rules of deploy/prometheus/rules/ghost-runner.rules.yml as a PrometheusRule.\n"
            "# Generated: scripts/check-deploy fails when the groups differ from that file; after editing\n"
            "# the rules, run deploy/prometheus/check-rules.py --write-prometheusrule.\n")
    out = root / "k8s/components/monitoring/prometheusrule.yaml"
    out.write_text(head + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=100), encoding="utf-8")
    print(f"wrote {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE.parent.parent)
    parser.add_argument("--component", type=Path, help="kubectl kustomize k8s/components/monitoring output")
    parser.add_argument("--write-prometheusrule", action="store_true")
    args = parser.parse_args()
    groups, alerts = load_rules(args.root)
    if args.write_prometheusrule:
        write_prometheusrule(args.root, groups)
        return 0
    errors: list[str] = []
    if not alerts:
        errors.append("no alerts found")
    check_annotations(args.root, alerts, errors)
    check_tests(args.root, alerts, errors)
    if args.component:
        check_component(args.component, groups, errors)
    for error in errors:
        print(f"ERROR: {error}")
    if errors:
        print(f"check-rules: {len(errors)} problem(s)")
        return 1
    print(f"check-rules: ok ({len(alerts)} alerts: annotations, runbooks, tests firing and not"
          f"{', the monitoring component' if args.component else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
