"""Kafka client settings: API version parsing and SASL/SSL kwargs from `KafkaSettings`."""

from __future__ import annotations

import pytest

from worker.kafka_client import (
    KafkaConfigError,
    client_kwargs,
    consumer_kwargs,
    make_consumer,
    make_producer,
    parse_api_version,
)
from worker.settings import KafkaSettings


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.9", (0, 9)),
        ("3.7.1", (3, 7, 1)),
        (" 2.8 ", (2, 8)),
        (None, None),
        ("", None),
        ("auto", None),
    ],
)
def test_api_version_parses_dotted_numbers(text: str | None, expected: tuple | None) -> None:
    assert parse_api_version(text) == expected


@pytest.mark.parametrize("text", ["0", "v3.7", "3.x", "1.2.3.4", "latest"])
def test_api_version_rejects_junk_with_the_variable_name(text: str) -> None:
    with pytest.raises(KafkaConfigError, match="FACESTREAM_KAFKA__API_VERSION"):
        parse_api_version(text)


def test_plaintext_has_no_security_kwargs_and_auto_detects_the_version() -> None:
    kwargs = client_kwargs(KafkaSettings(bootstrap_servers="a:9092, b:9092"))
    assert kwargs == {"bootstrap_servers": ["a:9092", "b:9092"], "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_scram_carries_credentials_and_ca() -> None:
    settings = KafkaSettings(
        bootstrap_servers="kafka:9093",
        security_protocol="sasl_ssl",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="facestream",
        sasl_password="s3cret",
        ssl_cafile="/etc/kafka/ca.pem",
        api_version="3.7",
    )
    kwargs = client_kwargs(settings)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "facestream"
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert kwargs["ssl_cafile"] == "/etc/kafka/ca.pem"
    assert kwargs["api_version"] == (3, 7)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"security_protocol": "TLS"}, "FACESTREAM_KAFKA__SECURITY_PROTOCOL"),
        ({"security_protocol": "SASL_SSL"}, "FACESTREAM_KAFKA__SASL_MECHANISM"),
        (
            {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "PLAIN",
                "sasl_username": "u",
            },
            "FACESTREAM_KAFKA__SASL_PASSWORD",
        ),
        ({"bootstrap_servers": " , "}, "FACESTREAM_KAFKA__BOOTSTRAP_SERVERS"),
    ],
)
def test_unusable_security_settings_name_what_to_fix(fields: dict, message: str) -> None:
    with pytest.raises(KafkaConfigError, match=message):
        client_kwargs(KafkaSettings(**fields))


def test_kwargs_are_accepted_by_kafka_python_without_a_broker() -> None:
    # An explicit version means no bootstrap at construction: nothing listens on port 1.
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", api_version="0.9")
    assert consumer_kwargs(settings, client_id="t")["enable_auto_commit"] is False
    make_consumer(settings, client_id="t").close(timeout_ms=1000)
    make_producer(settings, client_id="t").close(timeout=1)
