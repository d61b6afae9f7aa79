"""The Helm chart, its Grafana dashboard and its Prometheus rules: linted, rendered, validated.

helm, kubeconform and promtool come from `make tools` (tools/install-go-tools.sh), on PATH or
in ~/.cache/akisnap/bin, together with offline Kubernetes JSON schemas. A missing tool fails
these tests: it never skips them.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "akisnap"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
RULES = CHART / "rules" / "akisnap-rules.yaml"
RULES_TEST = CHART / "rules" / "akisnap-rules.test.yaml"
DASHBOARD = CHART / "dashboards" / "akisnap.json"
CACHE = Path(os.environ.get("AKISNAP_CACHE", Path.home() / ".cache" / "akisnap"))
SCHEMAS = CACHE / "kubernetes-json-schema"
RELEASE = "akisnap"
NAMESPACE = "snap"

# The metric contract of DESIGN.md ("Metrics"), as series names: counters end in _total,
# histograms are scraped as _bucket/_sum/_count. Another test compares this with a live /metrics.
DESIGN_COUNTERS_AND_GAUGES = {
    "akisnap_requests_total",
    "akisnap_retries_total",
    "akisnap_dlq_messages_total",
    "akisnap_snapshot_bytes_total",
    "akisnap_vectors_total",
    "akisnap_snapshots_total",
    "akisnap_delta_bytes_saved_total",
    "akisnap_compactions_total",
    "akisnap_in_flight_requests",
    "akisnap_in_flight_bytes",
    "akisnap_consumer_lag",
    "akisnap_last_success_timestamp_seconds",
    "akisnap_build_info",
    "akisnap_environment_errors_total",
    "akisnap_environment_paused",
    "akisnap_publish_retries_total",
    "akisnap_publish_stuck",
    "akisnap_fetch_errors_total",
    "akisnap_internal_errors_total",
    "akisnap_store_feature",
}
DESIGN_HISTOGRAMS = {
    "akisnap_request_duration_seconds",
    "akisnap_stage_duration_seconds",
    "akisnap_compression_ratio",
}
DESIGN_SERIES = DESIGN_COUNTERS_AND_GAUGES | {
    h + suffix for h in DESIGN_HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}
METRIC_RE = re.compile(r"\bakisnap_[a-z_]+")

# Every environment variable the daemon reads (its settings module is the source; a later test
# compares the two). The chart may set these and no other AKISNAP_* name.
DAEMON_ENV = {
    "AKISNAP_KAFKA_BOOTSTRAP",
    "AKISNAP_KAFKA_SECURITY_PROTOCOL",
    "AKISNAP_KAFKA_SASL_MECHANISM",
    "AKISNAP_KAFKA_SASL_USERNAME",
    "AKISNAP_KAFKA_SASL_PASSWORD",
    "AKISNAP_KAFKA_SSL_CAFILE",
    "AKISNAP_KAFKA_SSL_CERTFILE",
    "AKISNAP_KAFKA_SSL_KEYFILE",
    "AKISNAP_GROUP_ID",
    "AKISNAP_REQUEST_TOPIC",
    "AKISNAP_RESULT_TOPIC",
    "AKISNAP_DLQ_TOPIC",
    "AKISNAP_STORE",
    "AKISNAP_EXPORTS_ROOT",
    "AKISNAP_SOURCE_ALLOW",
    "AKISNAP_S3_ENDPOINT",
    "AKISNAP_S3_REGION",
    "AKISNAP_S3_ACCESS_KEY",
    "AKISNAP_S3_SECRET_KEY",
    "AKISNAP_S3_ADDRESSING_STYLE",
    "AKISNAP_S3_SSE",
    "AKISNAP_S3_SSE_KMS_KEY_ID",
    "AKISNAP_METRICS_PORT",
    "AKISNAP_LOG_FORMAT",
    "AKISNAP_LOG_LEVEL",
    "AKISNAP_RETRY_ATTEMPTS",
    "AKISNAP_RETRY_BASE_SECONDS",
    "AKISNAP_RETRY_CAP_SECONDS",
    "AKISNAP_SHUTDOWN_GRACE_SECONDS",
    "AKISNAP_REQUEST_DEADLINE_SECONDS",
    "AKISNAP_PUBLISH_ATTEMPTS",
    "AKISNAP_FETCH_ERROR_UNHEALTHY_SECONDS",
    "AKISNAP_MAX_IN_FLIGHT_REQUESTS",
    "AKISNAP_MAX_IN_FLIGHT_BYTES",
    "AKISNAP_PART_SIZE_BYTES",
    "AKISNAP_PAGE_BYTES",
    "AKISNAP_MAX_MESSAGE_BYTES",
    "AKISNAP_COMPACT_AFTER_DELTAS",
    "AKISNAP_TMP_DIR",
}
SECRET_ENV = {"AKISNAP_KAFKA_SASL_PASSWORD", "AKISNAP_S3_ACCESS_KEY", "AKISNAP_S3_SECRET_KEY"}

# Custom resources whose schemas are not in the Kubernetes release schemas and cannot be had
# offline: kubeconform skips them by name (a typo in a built-in kind still fails), and the tests
# below check their content instead (PrometheusRule with promtool, the others field by field).
CRD_KINDS = ("ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication")
CORE_KINDS = {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"}


def tool(name: str) -> str:
    """Path of a checker binary from PATH or the `make tools` cache; fails the test if absent."""
    found = shutil.which(name) or shutil.which(name, path=str(CACHE / "bin"))
    if not found:
        pytest.fail(f"{name} not found on PATH or in {CACHE / 'bin'}: run `make tools`")
    return found


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a command; return its result whatever the exit code."""
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def run_ok(*args: str, cwd: Path = ROOT) -> str:
    """Run a command that must succeed; its stdout."""
    proc = run(*args, cwd=cwd)
    assert proc.returncode == 0, (
        f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


@functools.cache
def render(*extra: str) -> str:
    """`helm template` of the chart with extra arguments (values files, --set)."""
    return run_ok(tool("helm"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *extra)


def docs(*extra: str) -> list[dict[str, Any]]:
    """The rendered manifests as dicts."""
    return [d for d in yaml.safe_load_all(render(*extra)) if d]


def one(manifests: list[dict[str, Any]], kind: str, name: str = RELEASE) -> dict[str, Any]:
    """The single manifest of a kind and name."""
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The akisnap container of the Deployment."""
    containers = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "akisnap")


RENDERS = {
    "defaults": (),
    "all-on": ("-f", str(ALL_ON)),
    "all-on-hpa": (
        "-f",
        str(ALL_ON),
        "--set",
        "autoscaling.keda.enabled=false,autoscaling.hpa.enabled=true,autoscaling.hpa.maxReplicas=30",
    ),
}


def test_helm_lint() -> None:
    """`helm lint --strict` passes with the default values and with every optional part on."""
    helm = tool("helm")
    run_ok(helm, "lint", "--strict", str(CHART))
    run_ok(helm, "lint", "--strict", str(CHART), "-f", str(ALL_ON))


def test_default_render_has_the_core_objects_only() -> None:
    """The defaults render Deployment, Service, ConfigMap, ServiceAccount, PDB, nothing else."""
    kinds = {m["kind"] for m in docs()}
    assert kinds == CORE_KINDS


def test_all_on_render_has_every_optional_part() -> None:
    """With every flag on, the monitoring, autoscaling and network objects are rendered too."""
    manifests = docs(*RENDERS["all-on"])
    kinds = {m["kind"] for m in manifests}
    assert kinds >= CORE_KINDS | {"NetworkPolicy", *CRD_KINDS}
    assert "HorizontalPodAutoscaler" not in kinds
    assert "HorizontalPodAutoscaler" in {m["kind"] for m in docs(*RENDERS["all-on-hpa"])}


def schema_versions() -> list[str]:
    """The Kubernetes releases `make tools` installed offline schemas for."""
    listing = SCHEMAS / "versions"
    if not listing.is_file():
        pytest.fail(f"no {listing}: run `make tools` (tools/install-go-tools.sh)")
    return listing.read_text().split()


def test_kubeconform_schemas_are_installed() -> None:
    """`make tools` left offline schemas of one or more Kubernetes releases, with Deployment."""
    versions = schema_versions()
    assert versions
    for version in versions:
        assert (SCHEMAS / f"v{version}-standalone-strict" / "deployment-apps-v1.json").is_file()


@pytest.mark.parametrize("name", sorted(RENDERS))
def test_render_passes_kubeconform_strict(name: str, tmp_path: Path) -> None:
    """Each render is valid for each installed Kubernetes release, unknown fields rejected."""
    kubeconform = tool("kubeconform")
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(render(*RENDERS[name]))
    expected = len([m for m in docs(*RENDERS[name]) if m["kind"] not in CRD_KINDS])
    for version in schema_versions():
        # Only the local schema directory: kubeconform never goes to the network.
        out = run_ok(
            kubeconform,
            "-strict",
            "-summary",
            "-output",
            "json",
            "-schema-location",
            str(SCHEMAS),
            "-kubernetes-version",
            version,
            "-skip",
            ",".join(CRD_KINDS),
            str(manifest),
        )
        summary = json.loads(out)["summary"]
        assert summary["invalid"] == 0 and summary["errors"] == 0, f"Kubernetes {version}: {out}"
        assert summary["valid"] == expected, f"Kubernetes {version}: {out}"


def test_deployment_runs_hardened_with_probes_on_the_metrics_port() -> None:
    """The pod runs `akisnap run` as non-root, read-only, no capabilities, probes on 9108."""
    manifests = docs()
    pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
    c = container(manifests)
    assert c["command"] == ["akisnap"] and c["args"] == ["run"]
    assert c["image"].endswith(":0.1.0")
    assert c["ports"] == [{"name": "metrics", "containerPort": 9108, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
    assert {"name": "TMPDIR", "value": "/tmp"} in c["env"]
    assert c["envFrom"] == [{"configMapRef": {"name": RELEASE}}]
    service = one(manifests, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_grace_period_follows_the_drain_setting() -> None:
    """terminationGracePeriodSeconds is shutdownGraceSeconds + 10; the ConfigMap has the value."""
    for grace in (30, 75):
        manifests = docs("--set", f"config.shutdownGraceSeconds={grace}")
        pod = one(manifests, "Deployment")["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == grace + 10
        data = one(manifests, "ConfigMap")["data"]
        assert data["AKISNAP_SHUTDOWN_GRACE_SECONDS"] == str(grace)


def test_config_change_rolls_the_pods() -> None:
    """The pod template's checksum/config annotation changes when a setting changes."""

    def checksum(*extra: str) -> str:
        deployment = one(docs(*extra), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() != checksum("--set", "config.logLevel=DEBUG")
    assert checksum() == checksum("--set", "config.logLevel=INFO")


def test_secrets_come_only_from_existing_secrets() -> None:
    """Passwords and keys are secretKeyRefs or mounted files, never in the ConfigMap."""
    manifests = docs(*RENDERS["all-on"])
    assert not [m for m in manifests if m["kind"] == "Secret"]
    env = {e["name"]: e for e in container(manifests)["env"]}
    for name in SECRET_ENV:
        assert "secretKeyRef" in env[name]["valueFrom"], name
    assert env["AKISNAP_KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == (
        "akisnap-kafka-sasl"
    )
    assert not SECRET_ENV & set(one(manifests, "ConfigMap")["data"])
    volumes = one(manifests, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "kafka-tls",
        "secret": {"secretName": "akisnap-kafka-tls", "defaultMode": 288},
    } in (volumes)
    data = one(manifests, "ConfigMap")["data"]
    assert data["AKISNAP_KAFKA_SSL_CAFILE"] == "/etc/akisnap/kafka-tls/ca.crt"


def test_chart_sets_only_variables_the_daemon_reads() -> None:
    """Every AKISNAP_* name the chart sets is a daemon setting, and all-on sets every one."""
    manifests = docs(*RENDERS["all-on"])
    configmap = one(manifests, "ConfigMap")
    env_names = {e["name"] for e in container(manifests)["env"]}
    chart_names = {n for n in set(configmap["data"]) | env_names if n.startswith("AKISNAP_")}
    assert chart_names - DAEMON_ENV == set()
    assert DAEMON_ENV - chart_names == set(), "settings that cannot be set from values"
    assert not set(configmap["data"]) - DAEMON_ENV, "non-AKISNAP keys in the settings ConfigMap"


def test_invalid_values_fail_the_render() -> None:
    """A value the daemon would reject stops `helm template` with a message naming it."""
    helm = tool("helm")
    cases = {
        "kafka.securityProtocol=TLS": "kafka.securityProtocol",
        "kafka.securityProtocol=SASL_SSL,kafka.sasl.existingSecret=s": "kafka.sasl.mechanism",
        "s3.addressingStyle=dns": "s3.addressingStyle",
        "autoscaling.hpa.enabled=true,autoscaling.keda.enabled=true": "at most one",
    }
    for setting, message in cases.items():
        proc = run(helm, "template", RELEASE, str(CHART), "--set", setting)
        assert proc.returncode != 0, setting
        assert message in proc.stderr, proc.stderr


def test_autoscaling_is_capped_at_the_partition_count() -> None:
    """KEDA and HPA max replicas never exceed kafka.requestTopicPartitions (12 in all-on)."""
    scaled = one(docs(*RENDERS["all-on"]), "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] == 12
    assert scaled["spec"]["scaleTargetRef"]["name"] == RELEASE
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == "akidb.snapshot.requests"
    assert trigger["metadata"]["consumerGroup"] == "akisnap-prod"
    assert trigger["metadata"]["sasl"] == "scram_sha512"
    assert trigger["authenticationRef"]["name"] == "akisnap-kafka"
    hpa = one(docs(*RENDERS["all-on-hpa"]), "HorizontalPodAutoscaler")
    assert hpa["spec"]["maxReplicas"] == 12
    assert "replicas" not in one(docs(*RENDERS["all-on"]), "Deployment")["spec"]


def test_monitoring_objects_embed_the_shipped_files() -> None:
    """PrometheusRule, dashboard ConfigMap and ServiceMonitor carry the chart's files and port."""
    manifests = docs(*RENDERS["all-on"])
    rule = one(manifests, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    dashboard = one(manifests, "ConfigMap", f"{RELEASE}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["akisnap.json"]) == json.loads(DASHBOARD.read_text())
    monitor = one(manifests, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    service = one(manifests, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    """`promtool check rules` accepts the rules file and the rendered PrometheusRule's groups."""
    promtool = tool("promtool")
    run_ok(promtool, "check", "rules", str(RULES))
    rendered = tmp_path / "rendered-rules.yaml"
    spec = one(docs(*RENDERS["all-on"]), "PrometheusRule")["spec"]
    rendered.write_text(yaml.safe_dump(spec))
    run_ok(promtool, "check", "rules", str(rendered))


def test_promtool_unit_tests_of_the_alerts() -> None:
    """`promtool test rules` passes: each alert fires when it should and stays quiet otherwise."""
    run_ok(tool("promtool"), "test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)


def test_every_alert_is_unit_tested_and_actionable() -> None:
    """Each alert has a severity, a summary and a description, and appears in the promtool tests."""
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert alerts >= {
        "AkisnapDeadLetters",
        "AkisnapErrorRatio",
        "AkisnapConsumerLagHigh",
        "AkisnapConsumerLagGrowing",
        "AkisnapNoRecentSuccess",
        "AkisnapAbsent",
        "AkisnapRetryStorm",
    }
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"] and len(r["annotations"]["description"]) > 80
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired = {t["alertname"] for g in tests for t in g["alert_rule_test"] if t.get("exp_alerts")}
    assert fired == alerts


def test_dashboard_is_well_formed() -> None:
    """The dashboard parses, has unique panel ids, titles, units and a datasource variable."""
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"] + [p for row in dash["panels"] for p in row.get("panels", [])]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in panels:
        assert p.get("title"), p["id"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["fieldConfig"]["defaults"].get("unit"), p["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"]), p["title"]
        assert all(t["expr"] for t in p["targets"]), p["title"]


def test_dashboard_and_rules_use_only_design_metrics() -> None:
    """Every akisnap_* series in the dashboard and rules is a DESIGN metric; all are shown."""
    dashboard_names = set(METRIC_RE.findall(DASHBOARD.read_text()))
    rule_names = set(METRIC_RE.findall(RULES.read_text()))
    unknown = (dashboard_names | rule_names) - DESIGN_SERIES
    assert not unknown, f"not in the DESIGN metric contract: {sorted(unknown)}"
    shown = {re.sub(r"_(bucket|sum|count)$", "", n) for n in dashboard_names}
    assert shown >= DESIGN_COUNTERS_AND_GAUGES | DESIGN_HISTOGRAMS


# Values the chart sets on purpose to something else than the daemon's default, and why.
DEPLOYMENT_VALUES = {
    "AKISNAP_KAFKA_BOOTSTRAP": "the in-cluster service name, not localhost",
    "AKISNAP_STORE": "an S3 bucket, not a directory of the pod",
    "AKISNAP_TMP_DIR": "the pod's writable emptyDir (the root filesystem is read-only)",
    "AKISNAP_S3_ADDRESSING_STYLE": "auto suits AWS (the default endpoint), path a local server",
}


def test_chart_defaults_are_the_daemon_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each setting the default render sets equals the settings model's default, parsed the
    same way the daemon parses it, unless DEPLOYMENT_VALUES says why not."""
    for name in [n for n in os.environ if n.upper().startswith("AKISNAP_")]:
        monkeypatch.delenv(name)
    from daemon.settings import Settings

    data = one(docs(*RENDERS["defaults"]), "ConfigMap")["data"]
    chart = {n: v for n, v in data.items() if n not in DEPLOYMENT_VALUES}
    assert chart, "the default render sets no settings"
    from_chart = Settings.load(
        None, **{n.removeprefix("AKISNAP_").lower(): v for n, v in chart.items()}
    )
    defaults = Settings.load(None)
    differ = {
        name: (getattr(from_chart, field), getattr(defaults, field))
        for name in chart
        if getattr(from_chart, field := name.removeprefix("AKISNAP_").lower())
        != getattr(defaults, field)
    }
    assert differ == {}, "chart value vs daemon default"
