"""The Grafana dashboards are valid, provisionable, fresh, and query only metrics that exist.

Validity is checked the way Grafana needs it: a schema version, unique panel ids, panels that
do not overlap on the 24-column grid, and every datasource referenced by the uid the
provisioning file declares. PromQL syntax is checked offline by promtool (each expression as a
recording rule); tests/integration/test_observability.py then runs every expression against a
real Prometheus. Dashboards and alert rules are generic over pipeline definitions: every query
filters on ``$pipeline``, and no panel or rule names an example pipeline's inputs, windows,
tables or models (tests/integration/test_observability_iot.py runs them on examples/iot).
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

from kappa.pipeline import load
from tests.unit.test_promtool import RULE_FILES, _catalogue

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
GRID_COLUMNS = 24
# Prometheus' own series the dashboards may use besides the catalogue.
BUILTIN_METRICS = {"up", "ALERTS"}
# What Grafana substitutes before a query reaches Prometheus; values fit a short test run.
VARIABLES = {"$__rate_interval": "15s", "$__range": "5m", "$__interval": "5s", "$pipeline": ".*", "$topic": ".*",
             "$stream": ".*", "$table": ".*", "$model": ".*"}
ENTITY_VARIABLES = ("topic", "stream", "table", "model")
EXAMPLES = sorted(p.parent for p in (REPO / "examples").glob("*/pipeline.toml"))
KAPPA_TABLES = {"rejected_events", "model_quality", "scores", "drift", "sink_offsets"}
"""Tables every pipeline has (sinks.rows.KAPPA_TABLES): generic, so panels may name them."""


def load_dashboard(path: Path) -> dict[str, Any]:
    """One dashboard JSON model."""
    return dict(json.loads(path.read_text()))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str, values: dict[str, str] | None = None) -> str:
    """The expression as Grafana sends it, with template variables replaced (``values`` first)."""
    table = {**VARIABLES, **{f"${k}": v for k, v in (values or {}).items()}}
    for name, value in sorted(table.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr


def variable_selector(definition: str) -> tuple[str, str]:
    """(series selector, label) of a ``label_values(selector, label)`` variable query."""
    found = re.fullmatch(r"label_values\((.+), (\w+)\)", definition)
    assert found, definition
    return found.group(1), found.group(2)


def raw_expressions() -> list[tuple[str, str]]:
    """(where, PromQL with template variables) of every target, annotation and variable query."""
    out = []
    for path in DASHBOARDS:
        dash = load_dashboard(path)
        for panel in all_panels(dash):
            for target in panel.get("targets", []):
                out.append((f"{path.name} panel {panel['id']} {panel['title']!r} {target['refId']}",
                            target["expr"]))
        for ann in dash["annotations"]["list"]:
            if "expr" in ann:
                out.append((f"{path.name} annotation {ann['name']!r}", ann["expr"]))
        for var in dash["templating"]["list"]:
            if var.get("type") == "query":
                # label_values(selector, label) is Grafana's API call; its series must exist
                out.append((f"{path.name} variable {var['name']}", variable_selector(var["definition"])[0]))
    return out


def expressions(values: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target, annotation and variable query, substituted.

    ``values`` picks variables (``{"pipeline": "iot"}``); the others are "All" (``.*``).
    """
    return [(where, substitute(expr, values)) for where, expr in raw_expressions()]


def datasource_uid() -> str:
    cfg = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (ds,) = cfg["datasources"]
    return str(ds["uid"])


def test_there_are_the_four_dashboards() -> None:
    titles = {load_dashboard(p)["title"] for p in DASHBOARDS}
    assert titles == {"Kappa / Pipeline overview", "Kappa / Data quality", "Kappa / Sinks",
                      "Kappa / Model quality"}
    uids = [load_dashboard(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_grafana_json(path: Path) -> None:
    dash = load_dashboard(path)
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
    dash = load_dashboard(path)
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


def _selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, matchers) of every Kappa, ``up`` and ``ALERTS`` selector in ``expr``."""
    by_name = r"(?<![\w}])\{([^}]*__name__[^}]*)\}"  # {__name__=~"a|b", ...}
    out = [("{__name__}", m.group(1)) for m in re.finditer(by_name, expr)]
    rest = re.sub(by_name, "", expr)
    out += [(m.group(1), m.group(2) or "") for m in
            re.finditer(r"\b(kappa_[a-z0-9_]+|up|ALERTS)\b(?:\{([^}]*)\})?", rest)]
    return out


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_is_scoped_to_the_selected_pipelines(path: Path) -> None:
    dash = load_dashboard(path)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert "pipeline" in variables, f"{path.name} has no pipeline variable"
    assert variables["pipeline"]["definition"] == "label_values(kappa_component_up, pipeline)"
    assert variables["pipeline"]["multi"] and variables["pipeline"]["includeAll"]
    checked = 0
    for where, expr in raw_expressions():
        if not where.startswith(path.name) or where.endswith("variable pipeline"):
            continue
        for metric, matchers in _selectors(expr):
            assert 'pipeline=~"$pipeline"' in matchers, f"{where}: {metric} is not filtered by $pipeline: {expr}"
            checked += 1
        # entity variables a query uses are variables of its dashboard
        for name in set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval", "__range", "__interval"}:
            assert name in variables, f"{where}: ${name} is not a variable of {path.name}"
    assert checked


def test_entity_dashboards_have_their_entity_variables() -> None:
    by_uid = {load_dashboard(p)["uid"]: {v["name"] for v in load_dashboard(p)["templating"]["list"]}
              for p in DASHBOARDS}
    assert by_uid["kappa-data-quality"] >= {"pipeline", "topic", "stream"}
    assert by_uid["kappa-sinks"] >= {"pipeline", "table"}
    assert by_uid["kappa-models"] >= {"pipeline", "model"}
    for uid, names in by_uid.items():
        assert names <= {"pipeline", *ENTITY_VARIABLES}, (uid, names)


def example_entities() -> set[str]:
    """Names the example pipelines declare: inputs, windows and their tables, models, views."""
    names = {"orders", "users", "fraud", "revenue"}  # the e-commerce words, whatever the definition says
    for root in EXAMPLES:
        pipe = load(root)
        names |= set(pipe.inputs) | set(pipe.windows) | {w.table for w in pipe.windows.values() if w.table}
        names |= set(pipe.models) | set(pipe.views)
    return names - KAPPA_TABLES


def test_no_panel_or_rule_names_an_example_entity() -> None:
    entities = example_entities()
    assert {"orders", "order_labels", "revenue_per_minute", "readings", "devices", "site_metrics"} <= entities
    texts = {p.name: p.read_text() for p in DASHBOARDS}
    texts |= {f.name: f.read_text() for f in RULE_FILES}
    generator = GRAFANA / "generate_dashboards.py"
    texts[generator.name] = generator.read_text()
    for name, text in texts.items():
        words = set(re.findall(r"[a-z0-9_]+", text.lower()))
        words |= {part for w in words for part in w.split("_")}  # also inside metric or label names
        hits = {e for e in entities if e in words or e.removesuffix("s") in words}
        assert not hits, f"{name} names example entities {sorted(hits)}"
    # pre-created label values come from the loaded definition, not from literals
    source = (REPO / "kappa" / "metrics.py").read_text()
    literals = set(re.findall(r"""["']([a-z0-9_]+)["']""", source))
    assert not literals & entities, f"kappa/metrics.py names example entities {sorted(literals & entities)}"
