"""How every Kafka client of the project reaches the broker: bootstrap servers, TLS and SASL, from
``Settings``. Every client is built with what this module gives, so that a managed Kafka (SASL_SSL) is
reached alike by the worker (faust), its own aiokafka clients and the CLI's kafka-python clients.

One ``ssl.SSLContext`` recipe serves all three libraries: each takes a ready context, so TLS (CA,
client certificate, hostname check) cannot differ between them.
"""

from __future__ import annotations

import ssl
from typing import Any

from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from state.faults import InterestStreamError
from streams.settings import ConfigError, Settings, variable


def bootstrap(settings: Settings) -> list[str]:
    if not settings.broker:
        raise InterestStreamError(
            "no broker configured: set INTEREST_BROKER=host:port (or start a local one with "
            "`interest-stream dev`)"
        )
    return [b.removeprefix("kafka://") for b in settings.broker.split(",")]


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS as a client: the broker's certificate checked against INTEREST_SSL_CAFILE (the system's CAs if
    empty) and its host name, and with INTEREST_SSL_CERTFILE this client's certificate (mutual TLS)."""
    try:
        context = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{variable('ssl_cafile')}={settings.ssl_cafile!r}: no CA certificate could be read ({exc})"
        ) from None
    if settings.ssl_certfile:
        try:
            # An encrypted key fails here rather than OpenSSL asking for its passphrase on the terminal.
            context.load_cert_chain(
                settings.ssl_certfile, settings.ssl_keyfile or None, password=lambda: b""
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"{variable('ssl_certfile')}={settings.ssl_certfile!r}, "
                f"{variable('ssl_keyfile')}={settings.ssl_keyfile!r}: "
                f"no certificate and unencrypted key could be read ({exc})"
            ) from None
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments that connect a kafka-python client (KafkaProducer, KafkaConsumer, KafkaAdminClient)
    or an aiokafka one (AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient): both libraries take the
    same names for the bootstrap servers, the protocol, a ready TLS context and SASL."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap(settings),
        "security_protocol": settings.security_protocol,
    }
    if settings.uses_tls:
        options["ssl_context"] = ssl_context(settings)
    if settings.uses_sasl:
        options.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password,
        )
    return options


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """The faust app's ``broker_credentials``: faust's aiokafka driver turns them into the same options
    (``credentials_to_aiokafka_auth``) for its consumers and producers. None: PLAINTEXT."""
    if settings.uses_sasl:
        return SASLCredentials(
            username=settings.sasl_username,
            password=settings.sasl_password,
            mechanism=settings.sasl_mechanism,
            ssl_context=ssl_context(settings) if settings.uses_tls else None,
        )
    if settings.uses_tls:
        return SSLCredentials(ssl_context(settings))
    return None
