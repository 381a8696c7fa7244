"""Settings validation and database URL handling."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.db.url import DatabaseURLError, to_async_url
from app.settings import Settings

GOOD_PASSWORD = "a-long-callback-password"


class TestProductionSecrets:
    def test_missing_credentials_rejected(self) -> None:
        with pytest.raises(ValidationError, match="SSO_RUM_USERNAME"):
            Settings(environment="production")

    @pytest.mark.parametrize("password", ["changeme", "secret", "", "short-pw"])
    def test_placeholder_or_short_password_rejected(self, password: str) -> None:
        with pytest.raises(ValidationError, match="SSO_RUM_PASSWORD"):
            Settings(environment="production", rum_username="digitalriver", rum_password=password)

    def test_placeholder_username_rejected(self) -> None:
        with pytest.raises(ValidationError, match="SSO_RUM_USERNAME"):
            Settings(environment="production", rum_username="admin", rum_password=GOOD_PASSWORD)

    def test_real_credentials_accepted(self) -> None:
        settings = Settings(
            environment="production", rum_username="digitalriver", rum_password=GOOD_PASSWORD
        )

        assert settings.is_development is False

    def test_development_allows_missing_credentials(self) -> None:
        assert Settings(environment="development").rum_username is None

    def test_production_is_the_default(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("SSO_ENVIRONMENT", raising=False)

        with pytest.raises(ValidationError):
            Settings()


class TestEnvironment:
    def test_networks_parsed_from_comma_list(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SSO_ENVIRONMENT", "development")
        monkeypatch.setenv("SSO_RUM_ALLOWED_NETWORKS", "10.0.0.0/8, 2001:db8::/32")

        settings = Settings()

        assert [str(n) for n in settings.rum_allowed_networks] == ["10.0.0.0/8", "2001:db8::/32"]

    def test_invalid_network_rejected(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SSO_ENVIRONMENT", "development")
        monkeypatch.setenv("SSO_RUM_ALLOWED_NETWORKS", "10.0.0.300/8")

        with pytest.raises(ValidationError, match="rum_allowed_networks"):
            Settings()

    def test_password_bounds_checked(self) -> None:
        with pytest.raises(ValidationError, match="SSO_PASSWORD_MIN_LENGTH"):
            Settings(environment="development", password_min_length=300, password_max_length=256)


class TestDatabaseUrl:
    @pytest.mark.parametrize(
        "raw",
        [
            "postgresql://user:pw@db.example:5433/sso",
            "postgres://user:pw@db.example:5433/sso",
            "postgresql+asyncpg://user:pw@db.example:5433/sso",
        ],
    )
    def test_driver_chosen(self, raw: str) -> None:
        url = to_async_url(raw)

        assert url.drivername == "postgresql+asyncpg"
        assert (url.username, url.password, url.host, url.port, url.database) == (
            "user",
            "pw",
            "db.example",
            5433,
            "sso",
        )

    def test_sslmode_becomes_ssl(self) -> None:
        url = to_async_url("postgresql://u@h/db?sslmode=require")

        assert dict(url.query) == {"ssl": "require"}

    def test_unix_socket_host_kept(self) -> None:
        url = to_async_url("postgresql://postgres:@/sso?host=/tmp/pg")

        assert url.query["host"] == "/tmp/pg"

    @pytest.mark.parametrize("raw", ["mysql://u@h/db", "not a url"])
    def test_other_schemes_rejected(self, raw: str) -> None:
        with pytest.raises(DatabaseURLError, match="postgresql://"):
            to_async_url(raw)
