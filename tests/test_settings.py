"""Settings are validated at start: a bad value names its variable, a misspelt one is warned about, and
``config`` shows the values in effect and where each came from."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from streams.settings import ConfigError, Settings, in_effect

ROOT = Path(__file__).resolve().parents[1]
CA = str(ROOT / "tests" / "fixtures" / "tls" / "ca.pem")
PASSWORD = "s3cret-Pa55"
SASL_SSL = {
    "INTEREST_SECURITY_PROTOCOL": "SASL_SSL",
    "INTEREST_SASL_MECHANISM": "SCRAM-SHA-512",
    "INTEREST_SASL_USERNAME": "svc-interest",
    "INTEREST_SASL_PASSWORD": PASSWORD,
}


@pytest.mark.parametrize(
    "variable, raw, says",
    [
        ("INTEREST_PARTITIONS", "abc", "INTEREST_PARTITIONS='abc': must be an integer"),
        ("INTEREST_PARTITIONS", "0", "INTEREST_PARTITIONS=0: must be at least 1"),
        ("INTEREST_HALF_LIFE_S", "nan", "INTEREST_HALF_LIFE_S=nan: must be a finite number"),
        ("INTEREST_HALF_LIFE_S", "-5", "INTEREST_HALF_LIFE_S=-5.0: must be greater than 0"),
        ("INTEREST_EXCLUDE_SEEN", "maybe", "INTEREST_EXCLUDE_SEEN='maybe': must be true or false"),
        ("INTEREST_WEB_PORT", "70000", "INTEREST_WEB_PORT=70000: must be a port number"),
        (
            "INTEREST_ENCODER_DEVICE",
            "gpu",
            "INTEREST_ENCODER_DEVICE='gpu': must be auto, cpu, cuda or cuda:N",
        ),
        ("INTEREST_LOG_LEVEL", "loud", "INTEREST_LOG_LEVEL='loud': must be debug or info"),
        ("INTEREST_CLICKS_TOPIC", "purchases", "the topics must all differ"),
    ],
)
def test_a_bad_value_fails_with_its_variable_and_value(variable, raw, says):
    with pytest.raises(ConfigError) as failure:
        Settings.from_env({variable: raw})
    assert says in str(failure.value)


@pytest.mark.parametrize(
    "environ, says",
    [
        (
            {"INTEREST_SECURITY_PROTOCOL": "TLS"},
            "INTEREST_SECURITY_PROTOCOL='TLS': must be PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL",
        ),
        (
            {**SASL_SSL, "INTEREST_SASL_MECHANISM": "GSSAPI"},
            "INTEREST_SASL_MECHANISM='GSSAPI': must be PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
        ),
        (
            {"INTEREST_SECURITY_PROTOCOL": "SASL_SSL", "INTEREST_SASL_PASSWORD": PASSWORD},
            "INTEREST_SECURITY_PROTOCOL=SASL_SSL needs INTEREST_SASL_MECHANISM, INTEREST_SASL_USERNAME",
        ),
        (
            {k: v for k, v in SASL_SSL.items() if k != "INTEREST_SECURITY_PROTOCOL"},
            "INTEREST_SASL_MECHANISM, INTEREST_SASL_USERNAME, INTEREST_SASL_PASSWORD set, but "
            "INTEREST_SECURITY_PROTOCOL=PLAINTEXT uses no SASL",
        ),
        (
            {**SASL_SSL, "INTEREST_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "INTEREST_SSL_CAFILE": CA},
            "INTEREST_SSL_CAFILE set, but INTEREST_SECURITY_PROTOCOL=SASL_PLAINTEXT uses no TLS",
        ),
        (
            {**SASL_SSL, "INTEREST_SSL_CAFILE": "/nonexistent/ca.pem"},
            "INTEREST_SSL_CAFILE='/nonexistent/ca.pem': no such file",
        ),
        (
            {"INTEREST_SECURITY_PROTOCOL": "SSL", "INTEREST_SSL_KEYFILE": CA},
            "INTEREST_SSL_KEYFILE is set without INTEREST_SSL_CERTFILE",
        ),
    ],
)
def test_bad_tls_or_sasl_settings_fail_naming_the_variables_never_the_password(environ, says):
    with pytest.raises(ConfigError) as failure:
        Settings.from_env(environ)
    assert says in str(failure.value) and PASSWORD not in str(failure.value)


def test_the_password_is_masked_where_settings_are_shown_and_given_whole_to_a_child_process():
    s = Settings.from_env({**SASL_SSL, "INTEREST_SSL_CAFILE": CA})
    assert Settings().security_protocol == "PLAINTEXT" and s.uses_sasl and s.uses_tls
    shown = {name: value for name, value, _ in in_effect(s, SASL_SSL)}
    assert (
        shown["INTEREST_SASL_PASSWORD"] == "****"
        and shown["INTEREST_SASL_USERNAME"] == "svc-interest"
    )
    # unset: nothing to mask
    assert {name: value for name, value, _ in in_effect(Settings(), {})}[
        "INTEREST_SASL_PASSWORD"
    ] == ""
    assert PASSWORD not in repr(s)
    assert s.env()["INTEREST_SASL_PASSWORD"] == PASSWORD and Settings.from_env(s.env()) == s


def test_values_are_parsed_by_type():
    s = Settings.from_env(
        {
            "INTEREST_PARTITIONS": " 8 ",
            "INTEREST_EXCLUDE_SEEN": "off",
            "INTEREST_HALF_LIFE_S": "3600",
            "INTEREST_DATA_DIR": "/tmp/x",
        }
    )
    assert (s.partitions, s.exclude_seen, s.half_life_s, s.data_dir) == (
        8,
        False,
        3600.0,
        Path("/tmp/x"),
    )
    assert Settings.from_env(s.env()) == s  # what a child process is given reads back the same


def test_a_misspelt_variable_is_warned_about_with_the_likely_one(caplog):
    with caplog.at_level(logging.WARNING):
        Settings.from_env({"INTEREST_PARTITION": "8"})
    assert (
        "INTEREST_PARTITION is not a setting; ignored (did you mean INTEREST_PARTITIONS?)"
        in caplog.text
    )


def test_config_shows_each_value_in_effect_and_its_source():
    environ = {"INTEREST_TOP_K": "5"}
    shown = {
        name: (value, source)
        for name, value, source in in_effect(Settings.from_env(environ), environ)
    }
    assert shown["INTEREST_TOP_K"] == ("5", "environment") and shown["INTEREST_PARTITIONS"] == (
        "4",
        "default",
    )


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={"PATH": "", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_reports_a_users_error_in_one_line():
    bad = cli("config", INTEREST_PARTITIONS="abc")
    assert (
        bad.returncode == 1
        and bad.stderr.strip()
        == "interest-stream config: INTEREST_PARTITIONS='abc': must be an integer"
    )
    missing = cli("replay", "/nonexistent/log.jsonl", INTEREST_BROKER="127.0.0.1:1")
    assert (
        missing.returncode == 1
        and missing.stderr.strip() == "interest-stream replay: /nonexistent/log.jsonl: no such file"
    )
    shown = cli("config", INTEREST_TOP_K="5")
    assert (
        shown.returncode == 0
        and "INTEREST_TOP_K=5" in shown.stdout
        and "environment" in shown.stdout
    )
    secret = cli("config", "--help-text", **SASL_SSL)
    assert secret.returncode == 0 and "INTEREST_SASL_PASSWORD=****" in secret.stdout
    assert PASSWORD not in secret.stdout + secret.stderr


def test_any_other_exception_keeps_its_traceback(monkeypatch):
    from cli import main
    from cli.commands import running

    def broken(args, settings):
        raise RuntimeError("a bug")  # torch's and the like: not the user's to fix, so not hidden

    monkeypatch.setattr(running, "config", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main.main(["config"])
