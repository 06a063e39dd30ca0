"""Dashboards and alerts follow the definition: examples/iot under a real Prometheus.

``kappa run`` and ``kappa produce --generator iot`` (real Kafka, registry and ClickHouse engine)
with ``KAPPA_PIPELINE=examples/iot``; a real Prometheus scrapes them. Every Kappa series carries
``pipeline="iot"``, and every dashboard query, with ``$pipeline`` set to ``iot``, returns series
of that pipeline only, naming the streams, topics, tables and windows the definition derives
(the model panels show the models it declares: none today).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from kappa.pipeline import load
from kappa.pipeline.derive import Names
from kappa.settings import Settings
from kappa.stack.prometheus import LocalPrometheus
from sinks.rows import tables_of
from tests.conftest import Stack, stop_group
from tests.unit.test_dashboards import expressions

pytestmark = pytest.mark.integration

KAPPA = str(Path(sys.executable).with_name("kappa"))
IOT = Path(__file__).resolve().parents[2] / "examples" / "iot"
READINGS = 3000
RATE = 60  # events/s: the producer stays alive (and scraped) while the dashboards are checked


def _labels(rows: list[dict[str, Any]], name: str) -> set[str]:
    return {r["metric"][name] for r in rows if name in r["metric"]}


def test_iot_metrics_carry_its_pipeline_and_fill_the_dashboards(stack: Stack, tmp_path: Path) -> None:
    pipe = load(IOT)
    run = uuid.uuid4().hex[:8]
    prefix, version = f"obsiot{run}.", f"o{run}"
    env = stack.env(tmp_path)
    env.update(KAPPA_PIPELINE=str(IOT), KAPPA_TOPIC_PREFIX=prefix, KAPPA_VERSION=version, KAPPA_PARTITIONS="1")
    names = Names(pipe, version, prefix)
    tables = set(tables_of(pipe)) - {"sink_offsets"}
    streams = {name for name, inp in pipe.inputs.items() if inp.id} | {w.stream for w in pipe.windows.values()}
    consumed = {names.input_topic(i.name) for i in names.streams()}
    consumed |= {names.input_topic(e.table) for e in pipe.enrich.values()}

    prom = LocalPrometheus.start(Settings(home=tmp_path), scrape_interval="1s")
    runner = subprocess.Popen([KAPPA, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    producer = subprocess.Popen([KAPPA, "produce", "--generator", "iot", "--events", str(READINGS),
                                 "--seed", "3", "--rate", str(RATE)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # annotations are event filters (drift changed > 0): empty means "no event"
        every = [(w, e) for w, e in expressions({"pipeline": "iot"}) if " annotation " not in w]
        # the model panels show the models the definition declares; without any they are empty
        no_model = [(w, e) for w, e in every if not pipe.models and w.startswith("model-quality.json")
                    and not w.endswith("variable pipeline")]
        exprs = [x for x in every if x not in no_model]
        landed = next(w for w, _ in exprs if w.startswith("sinks.json") and "'Rows landed /s by table'" in w)
        deadline = time.monotonic() + 150
        while True:
            results = {where: prom.query(expr) for where, expr in exprs}
            empty = [f"{where}: {expr}" for where, expr in exprs if not results[where]]
            seen_tables = _labels(results[landed], "table")
            if (not empty and seen_tables >= tables) or time.monotonic() > deadline or producer.poll() is not None:
                break
            time.sleep(2)
        assert not empty, "dashboard queries without data on examples/iot:\n" + "\n".join(empty)
        assert no_model or pipe.models
        assert not [w for w, e in no_model if prom.query(e)], "model panels with data for a pipeline without models"

        # every Kappa series and every target of this run is the iot pipeline's
        assert prom.query('count({__name__=~"kappa_.+", pipeline="iot"}) > 20')
        assert not prom.query('{__name__=~"kappa_.+", pipeline!="iot"}')
        assert _labels(prom.query('up{job="kappa"}'), "pipeline") == {"iot"}
        assert {r["metric"]["service"] for r in prom.query('up{job="kappa", pipeline="iot"} == 1')} >= {
            "producer", "processor", "sink", "runner"}

        # what the queries return is labelled by the definition's own entities
        for where, rows in results.items():
            assert _labels(rows, "pipeline") <= {"iot"}, where
        found = {label: set().union(*(_labels(rows, label) for rows in results.values()))
                 for label in ("table", "stream", "topic", "agent", "model")}
        assert found["table"] >= tables, f"tables of examples/iot missing: {tables - found['table']}"
        assert seen_tables >= tables
        assert found["stream"] >= streams == {"readings"}
        assert found["topic"] >= consumed >= {f"{prefix}readings", f"{prefix}devices"}
        assert found["agent"] >= set(pipe.windows), found["agent"]
        assert found["model"] == set(pipe.models)
        variable = prom.query(dict(exprs)["data-quality.json variable stream"])
        assert _labels(variable, "stream") >= streams

        # alert rules evaluate over the iot series (none needs an e-commerce one)
        for group in prom.api("rules")["groups"]:
            for rule in group["rules"]:
                assert rule["health"] in ("ok", "unknown"), (rule["name"], rule.get("lastError"))
                for alert in rule.get("alerts", []):
                    assert alert["labels"].get("pipeline") == "iot", alert
        _, err = producer.communicate(timeout=180)
        assert producer.returncode == 0, err
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait(10)
        stop_group(runner, 90)
        prom.stop()
