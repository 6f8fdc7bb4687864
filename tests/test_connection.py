"""TLS and SASL reach every Kafka client alike (``streams.connection``), checked against the real libraries
and no broker: what faust's aiokafka driver derives from the worker app's credentials, what aiokafka's and
kafka-python's clients accept, and a TLS handshake in memory with the context each library is given. And
end to end: the demo over mutual TLS through a TLS proxy in front of tansu (no local broker speaks TLS),
and the worker and the CLI over SASL PLAIN on noida-db (which takes any user; no local broker offers SCRAM).

tests/fixtures/tls/: a test CA, a broker certificate for localhost signed by it and a client certificate
(mutual TLS), made with openssl (`req -x509 -newkey rsa:2048 -nodes -days 36500`, then `x509 -req -CA`).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaTimeoutError
from kafka.net.sasl import get_sasl_mechanism

from cli.demo import run_demo
from cli.local_broker import LocalBroker, free_port
from cli.worker_process import WorkerProcess
from models.records import Recommendation
from streams.app import build_app
from streams.connection import client_options, faust_credentials
from streams.settings import ConfigError, Settings
from tests.brokers import Tansu, TlsProxy
from tests.conftest import SAMPLE, settings_for

ROOT = Path(__file__).resolve().parents[1]
TLS = ROOT / "tests" / "fixtures" / "tls"
CA, CLIENT_CERT, CLIENT_KEY = str(TLS / "ca.pem"), str(TLS / "client.pem"), str(TLS / "client.key")
PASSWORD = "s3cret-Pa55"
SASL = {"sasl_username": "svc-interest", "sasl_password": PASSWORD}
CLOSED = "127.0.0.1:1"  # nothing listens: a client that connects at construction fails fast

CASES = {
    "ssl": {"security_protocol": "SSL", "ssl_cafile": CA},
    "mutual-tls": {
        "security_protocol": "SSL",
        "ssl_cafile": CA,
        "ssl_certfile": CLIENT_CERT,
        "ssl_keyfile": CLIENT_KEY,
    },
    "sasl-plain": {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", **SASL},
    "sasl-ssl-scram-256": {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "ssl_cafile": CA,
        **SASL,
    },
    "sasl-ssl-scram-512-system-cas": {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        **SASL,
    },
}


def settings(case: str, tmp_path: Path) -> Settings:
    return Settings(broker=f"{CLOSED},127.0.0.2:9093", data_dir=tmp_path, **CASES[case])


def without_context(options: dict[str, Any]) -> dict[str, Any]:
    """The options, the TLS context replaced by what it checks: contexts are compared by handshakes."""
    context = options.get("ssl_context")
    out = {k: v for k, v in options.items() if k not in ("ssl_context", "bootstrap_servers")}
    if context is not None:
        out["tls"] = (
            context.verify_mode,
            context.check_hostname,
            sorted(str(c["subject"]) for c in context.get_ca_certs()),
        )
    return out


def handshake(client: ssl.SSLContext, require_client_cert: bool) -> dict:
    """A TLS handshake in memory between ``client`` and a broker with the fixture certificate for
    localhost; the client certificate the broker saw ({} if none)."""
    broker = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    broker.load_cert_chain(TLS / "broker.pem", TLS / "broker.key")
    if require_client_cert:
        broker.load_verify_locations(CA)
        broker.verify_mode = ssl.CERT_REQUIRED
    to_broker, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(to_client, to_broker, server_hostname="localhost")
    b_in, b_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    b = broker.wrap_bio(b_in, b_out, server_side=True)
    done: set[ssl.SSLObject] = set()
    for _ in range(10):
        for side in (c, b):
            if side not in done:
                try:
                    side.do_handshake()
                    done.add(side)
                except ssl.SSLWantReadError:
                    pass
        b_in.write(to_broker.read())
        to_client.write(b_out.read())
        if len(done) == 2:
            return b.getpeercert() or {}
    raise AssertionError("the handshake did not finish")


def test_plaintext_is_what_every_client_had_before(tmp_path):
    s = Settings(broker="a:9092,kafka://b:9092", data_dir=tmp_path)
    assert client_options(s) == {
        "bootstrap_servers": ["a:9092", "b:9092"],
        "security_protocol": "PLAINTEXT",
    }
    app = build_app(s).app
    assert app.conf.broker_credentials is None and faust_credentials(s) is None
    assert credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context) == {
        "security_protocol": "PLAINTEXT"
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_worker_and_the_clients_connect_alike(case, tmp_path):
    """faust's driver turns the worker app's credentials into the aiokafka options its consumers and
    producers get; they equal what every other client of the project gets."""
    s = settings(case, tmp_path)
    credentials = build_app(s).app.conf.broker_credentials
    assert credentials is not None and PASSWORD not in repr(credentials)
    worker = credentials_to_aiokafka_auth(credentials, None)
    options = client_options(s)
    assert options["bootstrap_servers"] == [CLOSED, "127.0.0.2:9093"]
    assert options["security_protocol"] == worker["security_protocol"] == s.security_protocol
    if s.uses_sasl:
        assert (
            options["sasl_mechanism"],
            options["sasl_plain_username"],
            options["sasl_plain_password"],
        ) == (s.sasl_mechanism, "svc-interest", PASSWORD)
    assert without_context({k: v for k, v in worker.items() if v is not None}) == without_context(
        options
    )


@pytest.mark.parametrize("case", [c for c in sorted(CASES) if CASES[c].get("ssl_cafile")])
def test_each_librarys_tls_context_trusts_the_ca_and_presents_the_client_certificate(
    case, tmp_path
):
    s = settings(case, tmp_path)

    async def aiokafka_context() -> ssl.SSLContext:
        admin = AIOKafkaAdminClient(**client_options(s))
        await admin.close()
        return admin._client._ssl_context

    producer = KafkaProducer(**client_options(s), api_version=(2, 8))
    producer.close()
    contexts = {
        "faust": credentials_to_aiokafka_auth(faust_credentials(s))["ssl_context"],
        "aiokafka": asyncio.run(aiokafka_context()),
        "kafka-python": producer.config["ssl_context"],
    }
    mutual = bool(s.ssl_certfile)
    for library, context in contexts.items():
        seen = handshake(context, require_client_cert=mutual)
        client_name = dict(rdn[0] for rdn in seen["subject"])["commonName"] if seen else None
        assert client_name == ("interest-stream client" if mutual else None), library
    # the handshake checks: the system's CAs do not know the test CA
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ssl.create_default_context(), require_client_cert=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_real_clients_accept_the_options(case, tmp_path):
    """Each library's own checks: aiokafka's clients validate protocol, mechanism and TLS context when
    built; kafka-python rejects unknown options when built and builds the SASL mechanism from its config
    when it connects (done here by hand)."""
    options = client_options(settings(case, tmp_path))

    async def aiokafka_clients() -> None:
        producer, consumer, admin = (
            AIOKafkaProducer(**options),
            AIOKafkaConsumer(**options),
            AIOKafkaAdminClient(**options),
        )
        await producer.stop()
        await consumer.stop()
        await admin.close()

    asyncio.run(aiokafka_clients())
    # a given api_version: no connection at construction
    producer = KafkaProducer(**options, api_version=(2, 8))
    consumer = KafkaConsumer(**options, api_version=(2, 8))
    producer.close()
    consumer.close()
    # past the config checks, it bootstraps, and nothing answers
    with pytest.raises(KafkaTimeoutError):
        KafkaAdminClient(**options, bootstrap_timeout_ms=100)
    if options["security_protocol"].startswith("SASL_"):
        mechanism = get_sasl_mechanism(options["sasl_mechanism"])(
            host="localhost", **producer.config
        )
        first = mechanism.auth_bytes()
        if options["sasl_mechanism"] == "PLAIN":
            assert first == b"svc-interest\0svc-interest\0" + PASSWORD.encode()
        else:  # SCRAM's client-first message names the user
            assert b"n=svc-interest" in first


def test_an_unreadable_tls_file_fails_naming_its_variable(tmp_path):
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    with pytest.raises(
        ConfigError, match="INTEREST_SSL_CAFILE=.*ca.pem.*no CA certificate could be read"
    ):
        client_options(Settings(broker=CLOSED, security_protocol="SSL", ssl_cafile=str(not_pem)))
    wrong_key = Settings(
        broker=CLOSED,
        security_protocol="SSL",
        ssl_certfile=CLIENT_CERT,
        ssl_keyfile=str(TLS / "broker.key"),
    )
    with pytest.raises(
        ConfigError,
        match="INTEREST_SSL_CERTFILE=.*INTEREST_SSL_KEYFILE=.*no certificate and unencrypted key",
    ):
        faust_credentials(wrong_key)


@pytest.mark.e2e
def test_the_demo_runs_over_mutual_tls(tiny_encoder, sample_events, tmp_path, request):
    """The worker (faust and its aiokafka clients, in a child process given the settings) and the CLI's
    kafka-python clients, all through a listener that requires TLS and a client certificate: the broker
    advertises the proxy, so no client reaches it in plaintext."""
    proxy_port = free_port()
    with (
        Tansu(tmp_path / "broker", advertised=f"127.0.0.1:{proxy_port}") as broker,
        TlsProxy(
            broker.address, TLS / "broker.pem", TLS / "broker.key", TLS / "ca.pem", proxy_port
        ) as proxy,
    ):
        plain = settings_for(proxy.address, tiny_encoder, tmp_path / "state", request.node.name)
        s = replace(plain, **CASES["mutual-tls"], **broker.worker_settings)
        latest = run_demo(s, show_users=0, timeout_s=120)
    assert set(latest) == {e["user_id"] for e in sample_events}
    # topic admin, catalogue producer, faust's consumer and producer, item-vectors consumer, ...
    assert proxy.clients >= 5


@pytest.mark.e2e
def test_the_worker_and_the_cli_work_over_sasl_and_log_no_password(
    tiny_encoder, sample_catalogue, tmp_path, request
):
    """The worker at debug log level and the CLI's commands, each a child process given the settings as
    its environment, authenticate with SASL PLAIN; the password is in no log line and no output."""
    with LocalBroker(tmp_path / "broker") as broker:
        s = replace(
            settings_for(broker.address, tiny_encoder, tmp_path / "state", request.node.name),
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            log_level="debug",
            **SASL,
            **broker.worker_settings,
        )
        env = {**os.environ, **s.env()}

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "cli.main", *args],
                env=env,
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )

        worker = WorkerProcess(s, tmp_path / "worker.log").start()
        try:
            done = [cli("catalogue", str(SAMPLE / "catalogue.jsonl"))]
            worker.wait_ready(min_items=len(sample_catalogue), timeout_s=120)
            done.append(cli("produce", "--user", "u1", "--item", "run-000"))
            done.append(
                cli("subscribe", "--from-beginning", "--count", "1", "--json", "--timeout", "60")
            )
        finally:
            worker.stop()
    assert [r.returncode for r in done] == [0, 0, 0], [r.stderr[-2000:] for r in done]
    assert Recommendation.from_json(done[-1].stdout.encode()).user_id == "u1"
    log = (tmp_path / "worker.log").read_text()
    # aiokafka's line: faust's clients and the worker's own
    assert "Authenticated as svc-interest via PLAIN" in log
    assert PASSWORD not in log and not [r for r in done if PASSWORD in r.stdout + r.stderr]
