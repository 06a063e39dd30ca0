"""The Grafana dashboards are valid, provisionable, fresh, and query only metrics that exist.

Validity is checked the way Grafana needs it: a schema version, unique panel ids, panels that
do not overlap on the 24-column grid, and every datasource referenced by the uid the
provisioning file declares. PromQL syntax is checked offline by promtool (each expression as a
recording rule); tests/integration/test_observability.py then runs every expression against a
real Prometheus.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_promtool import _catalogue

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
GRID_COLUMNS = 24
# Prometheus' own series the dashboards may use besides the catalogue.
BUILTIN_METRICS = {"up", "ALERTS"}
# What Grafana substitutes before a query reaches Prometheus; values fit a short test run.
VARIABLES = {"$__rate_interval": "15s", "$__range": "5m", "$__interval": "5s", "$model": ".*"}


def load(path: Path) -> dict[str, Any]:
    """One dashboard JSON model."""
    return dict(json.loads(path.read_text()))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str) -> str:
    """The expression as Grafana sends it, with template variables replaced."""
    for name, value in sorted(VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and annotation of every dashboard, substituted."""
    out = []
    for path in DASHBOARDS:
        dash = load(path)
        for panel in all_panels(dash):
            for target in panel.get("targets", []):
                out.append((f"{path.name} panel {panel['id']} {panel['title']!r} {target['refId']}",
                            substitute(target["expr"])))
        for ann in dash["annotations"]["list"]:
            if "expr" in ann:
                out.append((f"{path.name} annotation {ann['name']!r}", substitute(ann["expr"])))
        for var in dash["templating"]["list"]:
            if var.get("type") == "query":
                # label_values(metric, label) is Grafana's API call; its metric must exist
                metric = re.match(r"label_values\((\w+)", var["definition"])
                assert metric, var
                out.append((f"{path.name} variable {var['name']}", metric.group(1)))
    return out


def datasource_uid() -> str:
    cfg = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (ds,) = cfg["datasources"]
    return str(ds["uid"])


def test_there_are_the_four_dashboards() -> None:
    titles = {load(p)["title"] for p in DASHBOARDS}
    assert titles == {"Kappa / Pipeline overview", "Kappa / Data quality", "Kappa / Sinks",
                      "Kappa / Model quality"}
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_grafana_json(path: Path) -> None:
    dash = load(path)
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert dash["uid"] and len(dash["uid"]) <= 40 and dash["title"]
    assert "id" not in dash or dash["id"] is None, "provisioned dashboards must not carry a db id"
    panels = list(all_panels(dash))
    assert panels
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    occupied: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= GRID_COLUMNS and g["h"] > 0, p["title"]
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] == "row":
            continue
        assert p["targets"], f"panel {p['title']!r} has no query"
        assert p.get("description"), f"panel {p['title']!r} should say what it shows"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_datasource_is_the_provisioned_uid(path: Path) -> None:
    uid = datasource_uid()
    dash = load(path)
    refs = [p["datasource"] for p in all_panels(dash) if p["type"] != "row"]
    refs += [t["datasource"] for p in all_panels(dash) for t in p.get("targets", [])]
    refs += [a["datasource"] for a in dash["annotations"]["list"] if not a.get("builtIn")]
    refs += [v["datasource"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    assert refs
    for ref in refs:
        assert ref == {"type": "prometheus", "uid": uid}, ref


def test_dashboards_use_only_catalogued_metrics() -> None:
    known = _catalogue() | BUILTIN_METRICS
    exprs = expressions()
    assert len(exprs) > 30
    for where, expr in exprs:
        names = set(re.findall(r"\bkappa_[a-z0-9_]+", expr))
        names |= {b for b in BUILTIN_METRICS if re.search(rf"\b{b}\{{", expr)}
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= known, f"{where}: unknown metrics {names - known}"


def test_expressions_parse_with_promtool(tmp_path: Path) -> None:
    """promtool parses each expression as a recording rule: a syntax error fails here, offline."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: run `bash .ci/bootstrap` (Debian: apt-get install prometheus)")
    rules = [{"record": f"kappa_dashboard_check:expr_{i}", "expr": expr}
             for i, (_, expr) in enumerate(expressions())]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_committed_json_matches_the_generator() -> None:
    spec = importlib.util.spec_from_file_location("generate_dashboards", GRAFANA / "generate_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "run: python deploy/grafana/generate_dashboards.py"


def test_provider_path_is_where_compose_mounts_the_dashboards() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "kappa.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert any(m.startswith("./deploy/grafana/dashboards:") and m.split(":")[1] == path for m in mounts), mounts


def test_compose_mounts_point_at_files_that_exist() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name in ("prometheus", "grafana"):
        for mount in compose["services"][name]["volumes"]:
            host = mount.split(":")[0]
            if host.startswith("./"):
                assert (REPO / host).exists(), f"{name} mounts missing {host}"
    command = compose["services"]["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert "./deploy/prometheus:/etc/prometheus:ro" in compose["services"]["prometheus"]["volumes"]
