#!/usr/bin/env python3
"""Checks the Grafana dashboard and the Prometheus alert rules against the code.

1. The dashboard JSON has the essentials Grafana needs to load it: uid, title, an integer
   schemaVersion, panels with unique integer ids and a gridPos inside the 24-column grid,
   datasource refs that name a provisioned data source, and targets with a refId and an expr.
2. Every metric named in a panel query, a template variable query or an alert rule expr is
   exported by a service: the list is extracted from crates/**/src/**/*.rs by grepping the
   `metrics` macros (counter!/gauge!/histogram!, describe_*!), so the check follows the code.
   `_sum`/`_count` of a histogram are exported (the services render histograms as summaries);
   `_bucket` only once the code configures buckets (`set_buckets`). Series that Prometheus
   makes itself (up, scrape_*) are allowed.
3. Every label a query names (in a selector `metric{label=…}`, in `by`/`without`/`on`/
   `ignoring` or `label_values`) exists: on the selected metric (the `"label" =>` pairs of its
   macro calls), or as a label the scrape adds (`service`, `instance`, `job`, and in
   Kubernetes `namespace`, `pod`, `container`), or `le` on a `_bucket` series. So a panel that
   asks for `{quantile="0.99"}` of a histogram the services export as buckets fails. Series of
   the platform (kubelet volume stats) are allowed with their own labels.
4. Names listed in pending-metrics.txt (used by a panel or rule but not yet exported) are
   reported as PENDING instead of failing, unless --strict. A pending name that the code now
   exports is an error, so the list cannot go stale.

Usage: check-dashboard.py [--strict] [--root DIR] [--rules FILE ...]
Exit 0 when everything holds, 1 otherwise; every problem is printed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                        "scrape_samples_post_metric_relabeling", "scrape_series_added"}
MACRO = re.compile(
    r"\b(?:metrics::)?(counter|gauge|histogram|describe_counter|describe_gauge|describe_histogram)!"
    r"\s*\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")
# Series Kubernetes exports itself (the kubelet), which rules may use, with their labels.
PLATFORM = {
    "kubelet_volume_stats_available_bytes": {"persistentvolumeclaim", "namespace", "node"},
    "kubelet_volume_stats_capacity_bytes": {"persistentvolumeclaim", "namespace", "node"},
    "kubelet_volume_stats_used_bytes": {"persistentvolumeclaim", "namespace", "node"},
}
# Labels the scrape adds to every series (compose: job, instance, service; the k8s PodMonitor
# relabels service from app.kubernetes.io/name and adds namespace, pod, container).
TARGET_LABELS = {"service", "instance", "job", "namespace", "pod", "container", "__name__"}
CALL = re.compile(r"\b(?:metrics::)?(?:counter|gauge|histogram)!\s*\(")
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                   "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"}


def exported_metrics(root: Path) -> tuple[dict[str, str], bool]:
    """Metric name -> kind, from the services' sources; and whether buckets are configured."""
    names: dict[str, str] = {}
    buckets = False
    for path in sorted((root / "crates").glob("**/src/**/*.rs")):
        text = path.read_text(encoding="utf-8", errors="replace")
        buckets = buckets or "set_buckets" in text
        for kind, name in MACRO.findall(text):
            names.setdefault(name, kind.replace("describe_", ""))
    return names, buckets


def exported_labels(root: Path) -> dict[str, set[str]]:
    """Metric name -> the label names its macro calls pass (`"label" => value`)."""
    labels: dict[str, set[str]] = {}
    for path in sorted((root / "crates").glob("**/src/**/*.rs")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for call in CALL.finditer(text):
            depth, end = 1, call.end()
            while end < len(text) and depth:
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            body = text[call.end():end - 1]
            name = re.match(r'\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', body)
            if name:
                found = re.findall(r'"([a-zA-Z_][a-zA-Z0-9_]*)"\s*=>', body[name.end():])
                labels.setdefault(name.group(1), set()).update(found)
    return labels


def labels_of(name: str, labels: dict[str, set[str]]) -> set[str] | None:
    """The labels series `name` can carry; None when unknown (not exported, or pending)."""
    if name in PLATFORM:
        return PLATFORM[name] | TARGET_LABELS
    if name in PROMETHEUS_SYNTHETIC:
        return set(TARGET_LABELS)
    for suffix, extra in (("_bucket", {"le"}), ("_sum", set()), ("_count", set()), ("", set())):
        base = name[: -len(suffix)] if suffix and name.endswith(suffix) else (name if not suffix else None)
        if base is not None and base in labels:
            return labels[base] | TARGET_LABELS | extra
    return None


def label_problems(expr: str, labels: dict[str, set[str]]) -> list[str]:
    """Labels `expr` names that no series it selects carries."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    problems = []
    known_any: set[str] = set()
    unknown_metric = False
    for name in promql_metric_names(expr):
        have = labels_of(name, labels)
        if have is None:
            unknown_metric = True
        else:
            known_any |= have
    for match in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}", text):
        name, matchers = match.group(1), match.group(2)
        have = labels_of(name, labels) if name else None
        for label in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers):
            if label == "job":
                problems.append(f"label job on {name}: the job differs between the compose "
                                "Prometheus and a PodMonitor; select on service instead")
                continue
            if have is not None and label not in have:
                problems.append(f"label {label} on {name} (it has {', '.join(sorted(have))})")
    for match in re.finditer(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        for label in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", match.group(1)):
            if not unknown_metric and label not in known_any:
                problems.append(f"label {label} in `{match.group(0).strip()}` (carried by none of the series of the query)")
    return problems


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (selectors, not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)          # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)          # range and subquery windows
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)         # Grafana variables
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        rest = text[match.end():].lstrip()
        if rest.startswith("("):
            continue                                  # a function or aggregation
        if word.lower() in PROMQL_KEYWORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", word) or match.start() > 0 and text[match.start() - 1].isdigit():
            continue
        names.add(word)
    return names


def known(name: str, exported: dict[str, str], buckets: bool) -> bool:
    if name in exported or name in PROMETHEUS_SYNTHETIC or name in PLATFORM:
        return True
    for suffix in ("_sum", "_count"):
        if name.endswith(suffix) and exported.get(name[: -len(suffix)]) == "histogram":
            return True
    if name.endswith("_bucket") and buckets and exported.get(name[: -len("_bucket")]) == "histogram":
        return True
    return False


def provisioned_datasources(path: Path) -> dict[str, str]:
    """uid -> type of the provisioned data sources."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return {ds["uid"]: ds["type"] for ds in doc.get("datasources", [])}


def check_ref(ref, where: str, datasources: dict[str, str], errors: list[str]) -> None:
    if not isinstance(ref, dict) or "uid" not in ref or "type" not in ref:
        errors.append(f"{where}: datasource must be an object with type and uid, got {ref!r}")
    elif ref["uid"] not in datasources or datasources[ref["uid"]] != ref["type"]:
        errors.append(f"{where}: datasource {ref} is not provisioned ({datasources})")


def check_dashboard(path: Path, datasources: dict[str, str], errors: list[str]) -> dict[str, str]:
    """Schema essentials; returns query expr -> where it is used."""
    try:
        dash = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        errors.append(f"{path}: cannot load: {err}")
        return {}
    exprs: dict[str, str] = {}
    for key, kind in (("uid", str), ("title", str), ("schemaVersion", int), ("panels", list)):
        if not isinstance(dash.get(key), kind) or (kind is str and not dash[key]):
            errors.append(f"{path}: `{key}` must be a non-empty {kind.__name__}")
    if isinstance(dash.get("uid"), str) and not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dash["uid"]):
        errors.append(f"{path}: uid {dash['uid']!r} is not 1-40 of [A-Za-z0-9_-]")
    if isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] < 36:
        errors.append(f"{path}: schemaVersion {dash['schemaVersion']} is older than Grafana 9")
    for var in dash.get("templating", {}).get("list", []):
        where = f"variable {var.get('name')!r}"
        if var.get("type") == "query":
            check_ref(var.get("datasource"), where, datasources, errors)
            query = var.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            if not query:
                errors.append(f"{where}: query variable without a query")
            else:
                inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
                exprs[inner.group(1) if inner else query] = where
    flat = []
    for panel in dash.get("panels", []):
        flat.append(panel)
        flat.extend(panel.get("panels", []) if panel.get("type") == "row" else [])
    seen_ids: dict[int, str] = {}
    if not flat:
        errors.append(f"{path}: no panels")
    for panel in flat:
        title = panel.get("title") or "(untitled)"
        where = f"panel {panel.get('id')} {title!r}"
        pid = panel.get("id")
        if not isinstance(pid, int):
            errors.append(f"{where}: id must be an integer")
        elif pid in seen_ids:
            errors.append(f"{where}: id {pid} also used by {seen_ids[pid]}")
        else:
            seen_ids[pid] = where
        if not panel.get("type"):
            errors.append(f"{where}: no type")
        grid = panel.get("gridPos")
        if not isinstance(grid, dict) or any(not isinstance(grid.get(k), int) for k in "xywh"):
            errors.append(f"{where}: gridPos needs integer x, y, w, h, got {grid!r}")
        elif grid["x"] < 0 or grid["y"] < 0 or grid["w"] < 1 or grid["h"] < 1 or grid["x"] + grid["w"] > 24:
            errors.append(f"{where}: gridPos {grid} is outside the 24-column grid")
        if panel.get("type") == "row":
            continue
        check_ref(panel.get("datasource"), where, datasources, errors)
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            errors.append(f"{where}: no targets")
            continue
        ref_ids = set()
        for target in targets:
            ref_id = target.get("refId")
            if not ref_id or ref_id in ref_ids:
                errors.append(f"{where}: target refId {ref_id!r} missing or repeated")
            ref_ids.add(ref_id)
            if "datasource" in target:
                check_ref(target["datasource"], f"{where} target {ref_id}", datasources, errors)
            expr = target.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                errors.append(f"{where} target {ref_id}: no expr")
            else:
                exprs[expr] = f"{where} target {ref_id}"
    return exprs


def rule_exprs(path: Path, errors: list[str]) -> dict[str, str]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        errors.append(f"{path}: cannot load: {err}")
        return {}
    exprs = {}
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            exprs[str(rule.get("expr", ""))] = f"{path.name} rule {name}"
    return exprs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE.parent.parent)
    parser.add_argument("--dashboard", type=Path, default=HERE / "dashboards" / "ghost-runner.json")
    parser.add_argument("--datasources", type=Path,
                        default=HERE / "provisioning" / "datasources" / "datasources.yml")
    parser.add_argument("--pending", type=Path, default=HERE / "pending-metrics.txt")
    parser.add_argument("--rules", type=Path, nargs="*", default=[])
    parser.add_argument("--strict", action="store_true", help="pending metrics are errors too")
    args = parser.parse_args()

    errors: list[str] = []
    exported, buckets = exported_metrics(args.root)
    labels = exported_labels(args.root)
    if not exported:
        errors.append(f"no metrics macros found under {args.root}/crates: wrong --root?")
    datasources = provisioned_datasources(args.datasources)
    exprs = check_dashboard(args.dashboard, datasources, errors)
    for rules in args.rules:
        exprs.update(rule_exprs(rules, errors))

    pending = {}
    if args.pending.exists():
        for line in args.pending.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                pending[line] = True
    used: dict[str, list[str]] = {}
    for expr, where in exprs.items():
        for name in promql_metric_names(expr):
            used.setdefault(name, []).append(where)
    pending_used = []
    for name, wheres in sorted(used.items()):
        if known(name, exported, buckets):
            continue
        if name in pending and not args.strict:
            pending_used.append(name)
            continue
        errors.append(f"metric {name} is not exported by any service (used by {'; '.join(wheres)})")
    for expr, where in sorted(exprs.items(), key=lambda item: item[1]):
        inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", expr.strip())
        for problem in label_problems(inner.group(1) if inner else expr, labels):
            errors.append(f"{where}: {problem}")
    for name in sorted(pending):
        if known(name, exported, buckets):
            errors.append(f"metric {name} is exported now: remove it from {args.pending.name}")
        elif name not in used:
            errors.append(f"metric {name} in {args.pending.name} is used by no panel or rule")

    print(f"exported by the services ({len(exported)}): {', '.join(sorted(exported))}")
    print(f"named by the dashboard and rules ({len(used)}): {', '.join(sorted(used))}")
    for name in pending_used:
        print(f"PENDING: {name} is not exported yet (listed in {args.pending.name}): "
              f"{'; '.join(used[name])}")
    for error in errors:
        print(f"ERROR: {error}")
    if errors:
        print(f"check-dashboard: {len(errors)} problem(s)")
        return 1
    print(f"check-dashboard: ok ({len(exprs)} queries, {len(pending_used)} pending metric(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
