"""Pipeline definitions: the e-commerce example loads; each mistake names file, entry and why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kappa.pipeline import DEFAULT, PipelineError, load

EVENTS = {"type": "record", "name": "Event", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "device", "type": "string"},
    {"name": "value", "type": "double"}, {"name": "label", "type": "string"},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
DEVICES = {"type": "record", "name": "Device", "fields": [
    {"name": "device", "type": "string"}, {"name": "site", "type": "string"},
    {"name": "updated_at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
GOOD = """
[pipeline]
name = "t"

[inputs.devices]
key = "device"
table = true
time = "updated_at"

[inputs.events]
key = "device"
time = "at"
id = "event_id"
rules = [{ field = "value", check = "range", ge = 0 }]

[enrich.events]
table = "devices"
on = "device"
fields = { site = "site" }

[windows.per_site]
stream = "events"
size = "5m"
hop = "1m"
keys = ["site"]
aggregations = { n = "count", mean = "avg(value)" }
"""


def project(tmp_path: Path, text: str) -> Path:
    (tmp_path / "schemas").mkdir(exist_ok=True)
    (tmp_path / "schemas" / "events.avsc").write_text(json.dumps(EVENTS))
    (tmp_path / "schemas" / "devices.avsc").write_text(json.dumps(DEVICES))
    (tmp_path / "pipeline.toml").write_text(text)
    return tmp_path


def test_the_ecommerce_example_loads_with_what_the_contract_names() -> None:
    pipe = load(DEFAULT)
    assert (pipe.name, pipe.database) == ("ecommerce", "kappa")
    assert list(pipe.inputs) == ["users", "orders", "order_labels"]
    assert pipe.inputs["users"].table and not pipe.inputs["orders"].table
    assert pipe.inputs["orders"].id == "order_id" and pipe.inputs["orders"].dedupe_retention_ms == 86_400_000
    w = pipe.windows["revenue_per_minute"]
    assert (w.size_ms, w.hop_ms, w.keys) == (60_000, 60_000, ("category", "currency"))


def test_a_good_definition_loads(tmp_path: Path) -> None:
    pipe = load(project(tmp_path, GOOD))
    assert pipe.database == "t" and pipe.windows["per_site"].hop_ms == 60_000
    assert pipe.enrich["events"].fields == {"site": "site"}
    assert pipe.input("events").reasons == ("bad_value",)


@pytest.mark.parametrize(("change", "entry", "why"), [
    (('field = "value"', 'field = "valeu"'), "[inputs.events.rules[0]]",
     "'valeu' is not a field of schema events"),
    (('on = "device"', 'on = "site"'), "[enrich.events]", "join key (on) 'site' is not a field of schema events"),
    (('mean = "avg(value)"', 'mean = "avg(label)"'), "[windows.per_site]",
     "avg(label) needs a number, label is string"),
    (('mean = "avg(value)"', 'mean = "median(value)"'), "[windows.per_site]",
     "use count, sum(f), min(f), max(f) or avg(f)"),
    (('hop = "1m"', 'hop = "2m"'), "[windows.per_site]", "must divide size"),
    (("table = true\n", "table = true\npartitions = 3\n"), "[enrich.events]",
     "different partition counts (None and 3)"),
    (('[windows.per_site]', '[windows.events]'), "[windows.events]", "clashes with the one of [inputs.events]"),
    (('time = "at"', 'tme = "at"'), "[inputs.events]", "unknown key 'tme'"),
    (('check = "range"', 'check = "between"'), "[inputs.events.rules[0]]", "unknown check 'between'"),
    (('[inputs.events]\n', '[inputs.events]\nschema = "evnts"\n'), "[inputs.events]", "schema 'evnts': no file"),
    (('rules = [{ field = "value", check = "range", ge = 0 }]', 'rules = [{ function = "nope:f" }]'),
     "[inputs.events.rules[0]]", "no module 'nope'"),
])
def test_a_mistake_names_the_file_the_entry_and_why(tmp_path: Path, change: tuple[str, str], entry: str,
                                                    why: str) -> None:
    old, new = change
    assert old in GOOD
    path = project(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(PipelineError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path / 'pipeline.toml'}: {entry} "), message
    assert why in message, message


CHECKS = {"type": "record", "name": "Check", "fields": [
    {"name": "event_id", "type": "string"}, {"name": "broken", "type": "boolean"}, {"name": "note", "type": "string"},
    {"name": "checked_at", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
MODELLED = GOOD + """
[inputs.checks]
key = "event_id"
time = "checked_at"

[models.broken]
stream = "events"
labels = "checks"
on = "event_id"
label = "broken"
features = ["value", "site"]
"""


def test_a_model_loads_and_derives_its_scores(tmp_path: Path) -> None:
    from kappa.pipeline.derive import Names
    from stream_processors.operators.model import model_spec

    path = project(tmp_path, MODELLED)
    (path / "schemas" / "checks.avsc").write_text(json.dumps(CHECKS))
    pipe = load(path)
    m = pipe.models["broken"]
    assert (m.scores, m.score_field, m.features, m.roc_thresholds) == ("broken_scores", "broken_score",
                                                                         ("value", "site"), 10)
    names = Names(pipe, "v1")
    assert [(o.topic, o.table, o.key) for o in names.outputs() if o.kind == "scores"] == [
        ("t.v1.broken_scores", "broken_scores", "event_id")]
    assert "t.v1.learning.broken_events" in names.required_topics()
    assert [i.name for i in names.streams()] == ["events"]  # the labels feed the model, not a view
    spec = model_spec(pipe, "broken")
    assert spec.features({"value": 2, "site": "lyon", "label": "x"}) == {"value": 2.0, "site=lyon": 1.0}


def test_an_occurrence_model_keeps_its_label_stream_a_stream(tmp_path: Path) -> None:
    from kappa.pipeline.derive import Names

    path = project(tmp_path, MODELLED.replace('label = "broken"', 'label_by = "event_id"\nlabel_within = "10m"\n'
                                                                  'lag = "30s"', 1))
    (path / "schemas" / "checks.avsc").write_text(json.dumps(CHECKS))
    pipe = load(path)
    m = pipe.models["broken"]
    assert (m.label_by, m.label_within_ms, m.lag_ms, m.reads_labels) == ("event_id", 600_000, 30_000, False)
    assert [i.name for i in Names(pipe, "v1").streams()] == ["events", "checks"]  # checks: validated, a view


@pytest.mark.parametrize(("change", "why"), [
    (('label = "broken"', 'label = "note"'), "label 'note' is string: models predict a boolean label"),
    (('features = ["value", "site"]', 'features = ["value", "sight"]'),
     "feature 'sight' is not a field of schema events"),
    (('features = ["value", "site"]', 'features = 3'), "features = [\"field\", ...]"),
    (('features = ["value", "site"]', 'features = "nope:f"'), "no module 'nope'"),
    (('features = ["value", "site"]', 'features = ["value"]\nmodel = "river"'), "model 'river': \"module:function\""),
    (('features = ["value", "site"]', 'features = ["value"]\nscores = "per_site"'),
     "clashes with the one of [windows.per_site]"),
    (('on = "event_id"\nlabel', 'on = "note"\nlabel'), "join key (on) 'note' is not a field of schema events"),
    (('label = "broken"', 'label_by = "event_id"'), "label_by needs label_within"),
    (('label = "broken"', 'label = "broken"\nlabel_within = "1h"'), "label_within needs label_by"),
    (('label = "broken"', 'label_by = "note"\nlabel_within = "1h"'), "label_by 'note' is not a field of schema events"),
    (('label = "broken"', 'label_by = "event_id"\nlabel_within = "0s"'), "label_within must be above 0"),
    (('features = ["value", "site"]', 'features = ["value"]\nfeatures_by = "event_id"'),
     "features_by 'event_id' must be the key of events ('device')"),
    (('features = ["value", "site"]', 'features = ["value"]\nfeatures_by = "device"'),
     "features_by needs a features function"),
])
def test_a_model_mistake_names_the_file_the_entry_and_why(tmp_path: Path, change: tuple[str, str], why: str) -> None:
    old, new = change
    assert old in MODELLED
    path = project(tmp_path, MODELLED.replace(old, new, 1))
    (path / "schemas" / "checks.avsc").write_text(json.dumps(CHECKS))
    with pytest.raises(PipelineError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path / 'pipeline.toml'}: [models.broken] "), message
    assert why in message, message


def test_not_a_project(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="kappa init"):
        load(tmp_path)
    (tmp_path / "pipeline.toml").write_text("[pipeline\n")
    with pytest.raises(PipelineError, match="not valid TOML"):
        load(tmp_path)


def _kappa(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    kappa = str(Path(sys.executable).with_name("kappa"))
    return subprocess.run([kappa, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_pipeline_show_prints_what_a_definition_derives(tmp_path: Path) -> None:
    path = project(tmp_path, GOOD)
    shown = _kappa("pipeline", "show", "--json", "--pipeline", str(path), env={"KAPPA_VERSION": "v3"})
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert [i["topic"] for i in data["inputs"]] == ["devices", "events"]
    assert [o["topic"] for o in data["outputs"]] == ["t.v3.events.enriched", "t.v3.per_site", "t.v3.rejected"]
    assert data["outputs"][1]["order_by"] == ["window_start", "site"]
    assert [g["group"] for g in data["groups"]] == ["t-v3", "t-v3-sink"]
    assert set(data["views"]) == {"t.events", "t.per_site", "t.rejected_events"}
    # KAPPA_PIPELINE selects it the same way
    assert json.loads(_kappa("pipeline", "show", "--json", env={"KAPPA_PIPELINE": str(path),
                                                                 "KAPPA_VERSION": "v3"}).stdout) == data


def test_a_bad_definition_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    path = project(tmp_path, GOOD.replace('field = "value"', 'field = "valeu"'))
    for args in (["pipeline", "show"], ["status"], ["produce", "--file", "x.jsonl", "--topic", "events"]):
        done = _kappa(*args, "--pipeline", str(path))
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
        assert "[inputs.events.rules[0]] field 'valeu' is not a field of schema events" in done.stderr


# -- sessions and interval joins ----------------------------------------------------------------
OPERATORS = GOOD + """
[inputs.alerts]
schema = "events"
key = "device"
time = "at"

[sessions.visits]
stream = "events"
gap = "30m"
keys = ["device"]
aggregations = { n = "count", first_label = "first(label)", top = "max(value)", site = "last(site)" }

[joins.followed]
left = "events"
right = "alerts"
on = "device"
lower = "-5m"
upper = "1h"
how = "left"
fields = { label = "events.label", alert = "alerts.label" }
"""


def test_sessions_and_joins_load_and_give_their_operators_specs(tmp_path: Path) -> None:
    from stream_processors.operators.joins import join_spec
    from stream_processors.operators.sessions import session_spec

    pipe = load(project(tmp_path, OPERATORS))
    s = pipe.sessions["visits"]
    assert (s.stream, s.gap_ms, s.keys, s.grace_ms, s.table) == ("events", 1_800_000, ("device",), None, "visits")
    spec = session_spec(s, 5_000)
    assert spec.grace_ms == 5_000 and [a.fn for a in spec.aggregations] == ["count", "first", "max", "last"]
    j = pipe.joins["followed"]
    assert (j.left, j.right, j.on, j.lower_ms, j.upper_ms, j.how) == ("events", "alerts", "device", -300_000,
                                                                     3_600_000, "left")
    assert dict(join_spec(j, 0).fields) == {"label": ("left", "label"), "alert": ("right", "label")}
    assert load(project(tmp_path, GOOD)).sessions == {}


@pytest.mark.parametrize(("change", "entry", "why"), [
    (('gap = "30m"', 'gap = "half an hour"'), "[sessions.visits]", "'half an hour' is not a duration"),
    (('gap = "30m"', 'gap = "0s"'), "[sessions.visits]", "gap must be a positive duration"),
    (('gap = "30m"\n', ''), "[sessions.visits]", "missing key 'gap'"),
    (('keys = ["device"]', 'keys = ["site"]'), "[sessions.visits]",
     "keys must include 'device', the field events is keyed by"),
    (('keys = ["device"]', 'keys = ["devise"]'), "[sessions.visits]", "key 'devise' is not a field of events"),
    (('stream = "events"\ngap', 'stream = "devices"\ngap'), "[sessions.visits]",
     "stream 'devices' is not a stream input (events, alerts)"),
    (('top = "max(value)"', 'top = "max(label)"'), "[sessions.visits]", "max(label) needs a number, label is string"),
    (('top = "max(value)"', 'top = "p99(value)"'), "[sessions.visits]", "use count, sum(f), min(f), max(f), avg(f), "
                                                                        "first(f) or last(f)"),
    (('first_label = "first(label)"', 'session_end = "first(label)"'), "[sessions.visits]",
     "aggregations.session_end: clashes with a key or a column of the session's own"),
    (('lower = "-5m"', 'lower = "2h"'), "[joins.followed]", "lower (7200000 ms) is above upper (3600000 ms)"),
    (('how = "left"', 'how = "outer"'), "[joins.followed]", "how = 'outer': use \"inner\" or \"left\""),
    (('on = "device"\nlower', 'on = "event_id"\nlower'), "[joins.followed]",
     "input events is keyed by 'device', not by the join key 'event_id'"),
    (('right = "alerts"', 'right = "events"'), "[joins.followed]", "left and right are both 'events'"),
    (('alert = "alerts.label"', 'alert = "alerts.nope"'), "[joins.followed]",
     "fields.alert = 'alerts.nope': not a field of events or alerts"),
    (('upper = "1h"\n', ''), "[joins.followed]", "missing key 'upper'"),
    (('[joins.followed]', '[joins.visits]'), "[joins.visits]", "clashes with the one of [sessions.visits]"),
])
def test_a_session_or_join_mistake_names_the_file_the_entry_and_why(tmp_path: Path, change: tuple[str, str],
                                                                  entry: str, why: str) -> None:
    old, new = change
    assert old in OPERATORS
    path = project(tmp_path, OPERATORS.replace(old, new, 1))
    with pytest.raises(PipelineError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path / 'pipeline.toml'}: {entry} "), message
    assert why in message, message


def test_pipeline_show_prints_the_sessions_and_joins(tmp_path: Path) -> None:
    shown = _kappa("pipeline", "show", "--pipeline", str(project(tmp_path, OPERATORS)))
    assert shown.returncode == 0, shown.stderr
    assert "sessions.visits: events per device, gap 1800000 ms" in shown.stdout
    assert "joins.followed: left events x alerts on device, alerts.time - events.time in [-300000, 3600000] ms" \
        in shown.stdout
