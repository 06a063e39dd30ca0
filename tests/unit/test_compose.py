"""docker-compose.yml cannot run here (no Docker engine); at least it must define what the README promises."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_compose_defines_every_service_the_readme_mentions() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("kafka", "registry", "clickhouse", "prometheus", "grafana", "processor", "sink", "kappa"):
        assert name in services, f"docker-compose.yml lacks service {name!r}"
    readme = (REPO / "README.md").read_text()
    for name in ("Kafka", "Apicurio", "ClickHouse", "Prometheus", "Grafana"):
        assert name in readme


def test_compose_pipeline_points_at_the_compose_services() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    env = compose["services"]["sink"]["environment"]
    assert env["KAPPA_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["KAPPA_SCHEMA_REGISTRY_URL"].startswith("http://registry:")
    assert env["KAPPA_CLICKHOUSE_URL"].startswith("http://clickhouse:")
    for service in compose["services"].values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{port} must bind loopback only"


def test_mounted_config_files_exist() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{source} mounted but missing"


def test_every_pipeline_service_runs_the_mounted_pipeline_directory() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["x-kappa-env"]["KAPPA_PIPELINE"] == "/pipeline"
    for name in ("processor", "sink", "kappa"):
        service = compose["services"][name]
        assert service["environment"]["KAPPA_PIPELINE"] == "/pipeline", name
        mounts = [v for v in service["volumes"] if v.endswith(":/pipeline:ro")]
        assert mounts == ["${KAPPA_PIPELINE_DIR:-./examples/ecommerce}:/pipeline:ro"], name
    assert (REPO / "examples" / "ecommerce" / "pipeline.toml").is_file()
