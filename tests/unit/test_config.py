"""Settings from environment variables."""

import pytest

from regauth.config import SettingsError, load_settings

REQUIRED = {
    "REGAUTH_TABLE": "table",
    "REGAUTH_KEY_ID": "alias/regauth",
    "REGAUTH_SERVICES": "registry.test, registry-two.test",
    "REGAUTH_ISSUER": "regauth",
}


def test_defaults() -> None:
    settings = load_settings(REQUIRED)
    assert settings.services == ("registry.test", "registry-two.test")
    assert settings.token_ttl == 300
    assert settings.cert_ttl == 3600
    assert settings.realm == "regauth"


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_required_variable_missing(name: str) -> None:
    environ = {k: v for k, v in REQUIRED.items() if k != name}
    with pytest.raises(SettingsError, match=name):
        load_settings(environ)


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("REGAUTH_TOKEN_TTL", "59", "at least 60"),
        ("REGAUTH_TOKEN_TTL", "five", "must be an integer"),
        ("REGAUTH_SERVICES", "a,,b", "empty service name"),
        ("REGAUTH_CERT_TTL", "600", "must be at least twice"),
    ],
    ids=["ttl-below-docker-minimum", "ttl-not-integer", "empty-service", "cert-too-short"],
)
def test_invalid_values(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        load_settings({**REQUIRED, name: value})


def test_renew_margin_covers_token_and_leeway() -> None:
    settings = load_settings({**REQUIRED, "REGAUTH_TOKEN_TTL": "900", "REGAUTH_CERT_TTL": "7200"})
    # A token signed just before renewal must expire, plus the registry's 60 s
    # leeway, before the certificate does.
    assert settings.cert_renew_margin >= 900 + 60


def test_iam_defaults() -> None:
    settings = load_settings(REQUIRED)
    assert settings.iam_server_id == ""
    assert settings.iam_regions == ("us-east-1",)
    assert settings.iam_sts_endpoint is None


def test_iam_settings_read() -> None:
    settings = load_settings(
        {
            **REQUIRED,
            "REGAUTH_IAM_SERVER_ID": "registry.example.com",
            "REGAUTH_IAM_REGIONS": "us-east-1, eu-west-1",
            "REGAUTH_IAM_STS_ENDPOINT": "http://127.0.0.1:5000/",
        }
    )
    assert settings.iam_server_id == "registry.example.com"
    assert settings.iam_regions == ("us-east-1", "eu-west-1")
    assert settings.iam_sts_endpoint == "http://127.0.0.1:5000/"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("REGAUTH_IAM_REGIONS", "us-east-1,sts.attacker.example"),
        ("REGAUTH_IAM_SERVER_ID", "registry example"),
        ("REGAUTH_IAM_STS_ENDPOINT", "https://attacker.example/"),
        ("REGAUTH_IAM_STS_ENDPOINT", "http://127.0.0.1.attacker.example:80/"),
    ],
    ids=["region-host", "server-id-space", "remote-endpoint", "loopback-prefix"],
)
def test_iam_setting_invalid(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({**REQUIRED, name: value})


def test_iam_sts_endpoint_rejected_in_lambda() -> None:
    environ = {
        **REQUIRED,
        "REGAUTH_IAM_STS_ENDPOINT": "http://127.0.0.1:5000/",
        "AWS_LAMBDA_FUNCTION_NAME": "regauth-IssueToken",
    }
    with pytest.raises(SettingsError, match="Lambda"):
        load_settings(environ)
