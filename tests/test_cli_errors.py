"""Every failure of `akisnap` is one line per problem (one JSON object with --json) on stderr
and a documented exit code (daemon/exit_codes.py, DESIGN.md "Exit codes")."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from daemon import exit_codes
from tests.support import akisnap_process, create_snapshot, run_cli

CLOSED_PORT = "127.0.0.1:1"  # nothing listens on port 1: connection refused at once


@pytest.fixture
def store_with_snapshot(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> Path:
    np.save(tmp_path / "v.npy", np.ones((20, 4), dtype=np.float32))
    store = tmp_path / "store"
    code, _, err = create_snapshot((tmp_path / "v.npy").as_uri(), store)
    assert code == 0, err
    return store


def error_lines(err: str) -> list[str]:
    lines = err.strip().splitlines()
    assert all(line.startswith("akisnap: error: ") for line in lines), err
    return [line.removeprefix("akisnap: error: ") for line in lines]


def test_each_bad_variable_is_one_line_naming_it(clean_env: pytest.MonkeyPatch) -> None:
    """Two wrong AKISNAP_* variables: two lines, each naming its variable and reason; exit 2."""
    clean_env.setenv("AKISNAP_METRICS_PORT", "abc")
    clean_env.setenv("AKISNAP_LOG_FORMAT", "xml")
    code, out, err = run_cli(["snapshots", "list", "--store", "/nonexistent-akisnap"])
    assert code == exit_codes.USAGE and out == ""
    assert error_lines(err) == [
        "AKISNAP_METRICS_PORT: must be an integer",
        "AKISNAP_LOG_FORMAT: must be one of 'json' or 'console'",
    ]


def test_config_file_problems_name_the_file_and_key(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """A bad value and an unknown key in --config, a missing file, bad YAML: named lines."""
    config = tmp_path / "akisnap.yaml"
    config.write_text("metrics_port: 0\nmetric_port: 1\n", encoding="utf-8")
    code, _, err = run_cli(["snapshots", "list", "--config", str(config)])
    assert code == exit_codes.USAGE
    assert error_lines(err) == [
        f"--config {config}, key metrics_port: must be >= 1",
        f"--config {config}, key metric_port: unknown setting",
    ]
    code, _, err = run_cli(["snapshots", "list", "--config", str(tmp_path / "none.yaml")])
    assert code == exit_codes.USAGE
    assert error_lines(err) == [f"--config {tmp_path / 'none.yaml'}: cannot read: "
                                "No such file or directory"]  # fmt: skip
    config.write_text("a: [\n", encoding="utf-8")
    code, _, err = run_cli(["snapshots", "list", "--config", str(config)])
    assert code == exit_codes.USAGE and error_lines(err)[0].endswith("not valid YAML at line 2")


def test_json_errors_are_one_object_on_stderr(clean_env: pytest.MonkeyPatch) -> None:
    """With --json a settings failure is one JSON object naming each field, nothing on stdout."""
    clean_env.setenv("AKISNAP_METRICS_PORT", "abc")
    code, out, err = run_cli(["snapshots", "list", "--json"])
    assert code == exit_codes.USAGE and out == ""
    body = json.loads(err)["error"]
    assert body["exit_code"] == 2 and body["kind"] == "usage" and body["type"] == "SettingsError"
    assert body["problems"] == [{"field": "AKISNAP_METRICS_PORT", "reason": "must be an integer"}]


def test_usage_errors_exit_2_and_honour_json(clean_env: pytest.MonkeyPatch) -> None:
    """A missing option is exit 2 with the usage and one error line, or JSON with --json."""
    code, _, err = run_cli(["snapshots", "create", "--collection", "c"])
    assert code == exit_codes.USAGE
    assert err.startswith("usage: akisnap snapshots create")
    assert err.strip().splitlines()[-1] == (
        "akisnap: error: snapshots create: the following arguments are required: --from"
    )
    code, _, err = run_cli(["snapshots", "show", "--json"])
    assert code == exit_codes.USAGE and json.loads(err)["error"]["kind"] == "usage"


def test_not_found_and_not_a_directory(store_with_snapshot: Path) -> None:
    """An unknown id is 'not found' (3); a store under a file is an environment error (6)."""
    code, _, err = run_cli(["snapshots", "show", "feed", "--store", str(store_with_snapshot)])
    assert code == exit_codes.NOT_FOUND and len(error_lines(err)) == 1
    source = str(store_with_snapshot.parent / "v.npy")
    create = ["snapshots", "create", "--collection", "c", "--from", source]
    code, _, err = run_cli([*create, "--store", "file:///dev/null/x"])
    assert code == exit_codes.ENVIRONMENT
    assert error_lines(err) == ["not a directory: /dev/null/x"]
    code, _, err = run_cli([*create, "--store", "file:///dev/null/x", "--json"])
    assert json.loads(err)["error"] == {
        "exit_code": 6,
        "kind": "environment",
        "message": "not a directory: /dev/null/x",
        "type": "NotADirectoryError",
    }


def test_read_only_store_is_one_line(tmp_path: Path) -> None:
    """create into a store the user may not write to: one 'permission denied' line, exit 6."""
    np.save(tmp_path / "v.npy", np.ones((5, 4), dtype=np.float32))
    (tmp_path / "v.npy").chmod(0o644)
    tmp_path.chmod(0o755)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    # root ignores mode bits: run it as root without the capabilities that override them
    # (setpriv is in util-linux). Another user might not reach the checkout or its venv.
    no_override = "-dac_override,-dac_read_search"
    prefix = ("setpriv", f"--inh-caps={no_override}", f"--bounding-set={no_override}")
    result = akisnap_process(
        "snapshots", "create", "--collection", "c", "--from", (tmp_path / "v.npy").as_uri(),
        "--store", str(locked / "store"),
        prefix=prefix if os.geteuid() == 0 else (),
    )  # fmt: skip
    assert result.returncode == exit_codes.ENVIRONMENT, result.stderr
    assert error_lines(result.stderr) == [f"permission denied: {locked / 'store'}"]


def test_closed_pipe_is_one_line(store_with_snapshot: Path) -> None:
    """`akisnap snapshots list | true`: the reader is gone; one line, exit 141, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has exited before akisnap writes a byte
    try:
        result = akisnap_process(
            "snapshots", "list", "--store", str(store_with_snapshot),
            stdout=write_end, stderr=subprocess.PIPE,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert result.returncode == exit_codes.BROKEN_PIPE
    assert error_lines(result.stderr) == ["output closed before it was all written (broken pipe)"]


@pytest.mark.parametrize(
    "argv",
    [["dlq", "list"], ["request", "--collection", "c", "--random", "2,2"]],
    ids=["dlq-list", "request"],
)
def test_kafka_verbs_without_broker_name_the_address(argv: list[str]) -> None:
    """No broker: one line naming the address tried and the setting to change; exit 6."""
    result = akisnap_process(*argv, env={"AKISNAP_KAFKA_BOOTSTRAP": CLOSED_PORT})
    assert result.returncode == exit_codes.ENVIRONMENT, result.stderr
    (line,) = error_lines(result.stderr)
    assert CLOSED_PORT in line and "set AKISNAP_KAFKA_BOOTSTRAP" in line


def test_exit_code_table_in_design_matches_the_code() -> None:
    """DESIGN.md's exit-code table lists exactly the codes and kinds daemon/exit_codes uses."""
    design = (Path(__file__).resolve().parents[1] / "docs" / "DESIGN.md").read_text("utf-8")
    section = design.split("### Exit codes", 1)[1].split("\n\n", 3)[2]
    rows = [line.split("|")[1:3] for line in section.splitlines()[2:]]
    documented = {int(code): kind.strip() for code, kind in rows}
    assert documented == {exit_codes.OK: "ok", **exit_codes.KINDS}


def test_demo_without_broker_names_the_address(tmp_path: Path) -> None:
    """`akisnap demo` with no broker: one line naming the address and the setting; exit 6."""
    result = akisnap_process(
        "demo", "--output", str(tmp_path / "demo"), env={"AKISNAP_KAFKA_BOOTSTRAP": CLOSED_PORT}
    )
    assert result.returncode == exit_codes.ENVIRONMENT, result.stderr
    (line,) = error_lines(result.stderr)
    assert CLOSED_PORT in line and "set AKISNAP_KAFKA_BOOTSTRAP" in line


def test_every_error_class_has_its_exit_code() -> None:
    """Each kind of handlers error maps to the documented code; a bug is 1."""
    from handlers import errors

    cases = {
        errors.SnapshotNotFoundError("x"): exit_codes.NOT_FOUND,
        errors.StoreNotFoundError("x"): exit_codes.NOT_FOUND,
        errors.CorruptSnapshotError("x"): exit_codes.CORRUPT,
        errors.InvalidDocumentsError("x"): exit_codes.BAD_INPUT,
        errors.SourceError("x"): exit_codes.BAD_INPUT,
        errors.AmbiguousSnapshotIdError("x"): exit_codes.USAGE,
        errors.StoreConfigError("x"): exit_codes.USAGE,
        errors.StoreAccessDeniedError("x"): exit_codes.ENVIRONMENT,
        errors.StoreUnavailableError("x"): exit_codes.ENVIRONMENT,
        errors.BrokerUnavailableError("x"): exit_codes.ENVIRONMENT,
        errors.StoreUnreachableError("x"): exit_codes.ENVIRONMENT,
        PermissionError(13, "denied"): exit_codes.ENVIRONMENT,
        FileNotFoundError(2, "none"): exit_codes.NOT_FOUND,
        KeyboardInterrupt(): exit_codes.INTERRUPTED,
        BrokenPipeError(): exit_codes.BROKEN_PIPE,
        ExceptionGroup("g", [errors.CorruptSnapshotError("x")]): exit_codes.CORRUPT,
        ValueError("a bug"): exit_codes.FAILURE,
    }
    assert {type(exc).__name__: exit_codes.describe(exc).code for exc in cases} == {
        type(exc).__name__: code for exc, code in cases.items()
    }


def test_run_with_bad_settings_is_one_line_per_field(clean_env: pytest.MonkeyPatch) -> None:
    """`akisnap run` with a wrong variable stops before starting anything: one line, exit 2."""
    clean_env.setenv("AKISNAP_METRICS_PORT", "abc")
    code, out, err = run_cli(["run"])
    assert code == exit_codes.USAGE and out == ""
    assert error_lines(err) == ["AKISNAP_METRICS_PORT: must be an integer"]
