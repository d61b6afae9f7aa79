"""Why Kafka cannot be used, in one line naming the setting to check: for ``akisnap run`` when
it cannot connect, and for the daemon's log while it backs off (aiokafka only says "Unable to
bootstrap" when SASL or TLS is what failed); and whether a broker takes a connection again (the
environment gate's probe)."""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from daemon.settings import Settings
from handlers.errors import BrokerUnavailableError


async def probe_bootstrap(bootstrap: str, timeout_seconds: float) -> None:
    """Return once a broker of the bootstrap list takes a TCP connection; raise
    BrokerUnavailableError when none does."""
    last: Exception | None = None
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]") or "localhost", int(port or 9092)),
                timeout_seconds,
            )
        except (OSError, TimeoutError, ValueError) as err:
            last = err
            continue
        writer.close()
        return
    raise BrokerUnavailableError(f"no bootstrap broker accepts a connection: {last}")


async def explain_kafka_failure(
    settings: Settings, timeout_seconds: float = 10.0
) -> tuple[str, bool]:
    """Why the first bootstrap broker cannot be used, in one line naming the setting to check
    (aiokafka only says "Unable to bootstrap" when SASL or TLS is what failed), and whether
    the broker refused us (credentials, certificates: retrying will not help) rather than
    being unreachable."""
    host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
    security = settings.kafka_security_kwargs()
    try:
        conn = await create_conn(
            host.strip("[]") or "localhost",
            int(port) if port.isdigit() else 9092,
            request_timeout_ms=int(timeout_seconds * 1000),
            **security,
        )
    except (SaslAuthenticationFailed, AuthenticationFailedError) as err:
        return (
            f"SASL {settings.kafka_sasl_mechanism} authentication failed for user "
            f"{settings.kafka_sasl_username!r}: {_broker_text(err)} (check "
            "AKISNAP_KAFKA_SASL_USERNAME and AKISNAP_KAFKA_SASL_PASSWORD)",
            True,
        )
    except UnsupportedSaslMechanismError as err:
        return f"{err} (check AKISNAP_KAFKA_SASL_MECHANISM)", True
    except ssl.SSLCertVerificationError as err:
        return (
            f"TLS: the broker's certificate is not trusted: {err.verify_message} (check "
            "AKISNAP_KAFKA_SSL_CAFILE)",
            True,
        )
    except (ssl.SSLError, KafkaConnectionError) as err:
        hint = (
            " (does the listener want a client certificate? AKISNAP_KAFKA_SSL_CERTFILE and "
            "AKISNAP_KAFKA_SSL_KEYFILE; or is it not a TLS listener?)"
            if settings.kafka_security_protocol in ("SSL", "SASL_SSL")
            else " (is it a TLS or SASL listener? AKISNAP_KAFKA_SECURITY_PROTOCOL)"
        )
        return f"the broker closed the connection during set-up: {err}{hint}", True
    except (OSError, TimeoutError) as err:
        return f"cannot reach {settings.kafka_bootstrap}: {type(err).__name__}: {err}", False
    except KafkaError as err:
        return f"{type(err).__name__}: {err}", False
    conn.close()
    return "the first bootstrap broker accepts the connection now", False


def _broker_text(err: KafkaError) -> str:
    text = str(err)
    return text.split(": ", 1)[1] if text.startswith("[Error") and ": " in text else text
