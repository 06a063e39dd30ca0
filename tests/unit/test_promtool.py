"""``promtool check config``, ``check rules`` and ``test rules`` over deploy/prometheus.

promtool is the same parser and rule engine as the server, so a config or rule that passes
here loads in Prometheus; the alert unit tests prove each alert fires on its symptom and
stays quiet on a healthy neighbour.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from kappa import metrics
from kappa.stack.prometheus import DEPLOY, render_config

PROMTOOL = shutil.which("promtool")
RULE_FILES = sorted((DEPLOY / "rules").glob("*.yml"))
TEST_FILES = sorted((DEPLOY / "tests").glob("*.yml"))


def _promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        pytest.fail("promtool not found: run `bash .ci/bootstrap` (Debian: apt-get install prometheus)")
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=60, check=False)


def test_compose_config_is_valid() -> None:
    out = _promtool("check", "config", DEPLOY / "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rendered_local_config_is_valid(tmp_path: Path) -> None:
    (tmp_path / "metrics" / "targets").mkdir(parents=True)
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(render_config(tmp_path, "127.0.0.1:9090", "1s"))
    out = _promtool("check", "config", cfg)
    assert out.returncode == 0, out.stdout + out.stderr
    # the rules are really loaded from deploy/, not an empty glob
    assert f"{len(RULE_FILES)} rule files found" in out.stdout


def test_rules_are_valid() -> None:
    assert RULE_FILES
    out = _promtool("check", "rules", *RULE_FILES)
    assert out.returncode == 0, out.stdout + out.stderr


def test_alert_unit_tests_pass() -> None:
    assert TEST_FILES
    out = _promtool("test", "rules", *TEST_FILES, cwd=DEPLOY / "tests")
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_has_a_unit_test() -> None:
    alerts = {r["alert"] for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    firing = {case["alertname"] for f in TEST_FILES for t in yaml.safe_load(f.read_text())["tests"]
              for case in t.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts and alerts <= firing, f"alerts never shown firing in a promtool test: {alerts - firing}"


def test_rules_use_only_catalogued_metrics() -> None:
    names = _catalogue()
    exprs = [r["expr"] for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]
             for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\bkappa_[a-z0-9_]+", e)}
    assert used and used <= names, f"unknown metrics in alert rules: {used - names}"


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The checks above can fail: promtool does reject a bad expression."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: rate(kappa_x[5m]\n")
    assert _promtool("check", "rules", bad).returncode != 0


def _catalogue() -> set[str]:
    """Sample names the catalogue can export (``_total``, ``_bucket``/``_sum``/``_count``)."""
    names = set()
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        for family in obj.collect():
            names.add(family.name)
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names.update({f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"})
    return names
