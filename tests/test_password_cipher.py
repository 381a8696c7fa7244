"""Encrypted passwords: the two formats, the key settings, and Login and Create requests using them.

Each vector is built here from `cryptography` primitives (or, for CBC, also by OpenSSL), not with
the module under test, so a test fails if the module's byte layout drifts from the documented one.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from prometheus_client import REGISTRY
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.identity.passwords import PasswordHasher
from app.models import LoginEvent, User
from app.rum.password_cipher import (
    PasswordDecryptionError,
    decrypt_cbc,
    decrypt_gcm,
    decrypt_password,
    encrypt_cbc,
    encrypt_gcm,
)
from app.settings import Settings
from tests.conftest import make_settings
from tests.factories import make_user
from tests.rum_messages import basic_auth, child_text, create_request, login_request, parse

KEY = bytes(range(32))
KEY_BASE64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
OTHER_KEY = bytes(range(1, 33))
GCM_IV = bytes.fromhex("cafebabefacedbaddecaf888")
CBC_IV = bytes(range(100, 116))
PASSWORD = "123123ab"
# printf %s 123123ab | openssl enc -aes-256-cbc -K 000102…1f -iv 6465…73, with the IV prepended.
OPENSSL_CBC_VECTOR = "ZGVmZ2hpamtsbW5vcHFycx9ZaIpzpK+8G4d8Z7WLZ2s="


def gcm_vector(key: bytes, iv: bytes, password: str) -> str:
    """Base64(IV ‖ ciphertext ‖ tag), with the tag split off and re-joined to pin the layout."""
    sealed = AESGCM(key).encrypt(iv, password.encode(), None)
    ciphertext, tag = sealed[:-16], sealed[-16:]
    assert len(tag) == 16
    return base64.b64encode(iv + ciphertext + tag).decode()


def cbc_vector(key: bytes, iv: bytes, password: str) -> str:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(password.encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(padded) + encryptor.finalize()).decode()


def cbc_raw(key: bytes, iv: bytes, plaintext: bytes) -> str:
    """CBC without padding, for plaintexts that are already whole blocks."""
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(plaintext) + encryptor.finalize()).decode()


class TestGcm:
    def test_decrypts_independent_vector(self) -> None:
        assert decrypt_gcm(KEY, gcm_vector(KEY, GCM_IV, PASSWORD)) == PASSWORD

    def test_layout_is_iv_ciphertext_tag(self) -> None:
        raw = base64.b64decode(gcm_vector(KEY, GCM_IV, PASSWORD))

        assert len(raw) == 12 + len(PASSWORD) + 16
        assert raw[:12] == GCM_IV

    def test_encrypt_matches_independent_vector(self) -> None:
        assert encrypt_gcm(KEY, PASSWORD, GCM_IV) == gcm_vector(KEY, GCM_IV, PASSWORD)

    def test_random_iv_round_trip(self) -> None:
        first = encrypt_gcm(KEY, "pässwörd ✓")

        assert decrypt_gcm(KEY, first) == "pässwörd ✓"
        assert encrypt_gcm(KEY, "pässwörd ✓") != first

    def test_changed_tag_rejected(self) -> None:
        raw = bytearray(base64.b64decode(gcm_vector(KEY, GCM_IV, PASSWORD)))
        raw[-1] ^= 0x01

        with pytest.raises(PasswordDecryptionError, match="tag"):
            decrypt_gcm(KEY, base64.b64encode(bytes(raw)).decode())

    def test_changed_ciphertext_rejected(self) -> None:
        raw = bytearray(base64.b64decode(gcm_vector(KEY, GCM_IV, PASSWORD)))
        raw[12] ^= 0x80

        with pytest.raises(PasswordDecryptionError):
            decrypt_gcm(KEY, base64.b64encode(bytes(raw)).decode())

    def test_wrong_key_rejected(self) -> None:
        with pytest.raises(PasswordDecryptionError):
            decrypt_gcm(OTHER_KEY, gcm_vector(KEY, GCM_IV, PASSWORD))

    def test_too_short_rejected(self) -> None:
        with pytest.raises(PasswordDecryptionError, match="shorter"):
            decrypt_gcm(KEY, base64.b64encode(bytes(27)).decode())

    def test_empty_password_allowed(self) -> None:
        assert decrypt_gcm(KEY, gcm_vector(KEY, GCM_IV, "")) == ""


class TestCbc:
    def test_decrypts_openssl_vector(self) -> None:
        assert decrypt_cbc(KEY, OPENSSL_CBC_VECTOR) == PASSWORD

    def test_decrypts_independent_vector(self) -> None:
        assert decrypt_cbc(KEY, cbc_vector(KEY, CBC_IV, PASSWORD)) == PASSWORD

    def test_independent_vector_equals_openssl(self) -> None:
        assert cbc_vector(KEY, CBC_IV, PASSWORD) == OPENSSL_CBC_VECTOR

    def test_encrypt_matches_independent_vector(self) -> None:
        assert encrypt_cbc(KEY, PASSWORD, CBC_IV) == cbc_vector(KEY, CBC_IV, PASSWORD)

    def test_full_block_gets_padding_block(self) -> None:
        value = cbc_vector(KEY, CBC_IV, "0123456789abcdef")

        assert len(base64.b64decode(value)) == 16 + 32
        assert decrypt_cbc(KEY, value) == "0123456789abcdef"

    def test_non_ascii_round_trip(self) -> None:
        assert decrypt_cbc(KEY, encrypt_cbc(KEY, "mot de passe é")) == "mot de passe é"

    def test_bad_padding_rejected(self) -> None:
        value = cbc_raw(KEY, CBC_IV, b"sixteen bytes!!\x00")

        with pytest.raises(PasswordDecryptionError, match="padding"):
            decrypt_cbc(KEY, value)

    def test_partial_block_rejected(self) -> None:
        raw = base64.b64decode(OPENSSL_CBC_VECTOR)[:-1]

        with pytest.raises(PasswordDecryptionError, match="16-byte blocks"):
            decrypt_cbc(KEY, base64.b64encode(raw).decode())

    def test_iv_only_rejected(self) -> None:
        with pytest.raises(PasswordDecryptionError):
            decrypt_cbc(KEY, base64.b64encode(CBC_IV).decode())

    def test_non_utf8_plaintext_rejected(self) -> None:
        raw = cbc_raw(KEY, CBC_IV, b"\xff\xfe" + bytes([14]) * 14)

        with pytest.raises(PasswordDecryptionError, match="UTF-8"):
            decrypt_cbc(KEY, raw)


class TestDecryptPassword:
    def test_none_returns_value_unchanged(self) -> None:
        assert decrypt_password("none", None, "  plain  ") == "  plain  "

    def test_line_breaks_in_base64_ignored(self) -> None:
        value = gcm_vector(KEY, GCM_IV, PASSWORD)
        wrapped = f"\n  {value[:10]}\r\n{value[10:]}  \n"

        assert decrypt_password("aes-256-gcm", KEY, wrapped) == PASSWORD

    @pytest.mark.parametrize("cipher", ["aes-256-gcm", "aes-256-cbc"])
    def test_not_base64_rejected_without_value(self, cipher: str) -> None:
        with pytest.raises(PasswordDecryptionError) as raised:
            decrypt_password(cipher, KEY, "plain-text-secret!")  # type: ignore[arg-type]

        assert "Base64" in str(raised.value)
        assert "plain-text-secret" not in str(raised.value)

    def test_cbc_dispatch(self) -> None:
        assert decrypt_password("aes-256-cbc", KEY, OPENSSL_CBC_VECTOR) == PASSWORD


class TestKeySettings:
    def test_key_decoded(self) -> None:
        settings = make_settings(rum_password_cipher="aes-256-gcm", rum_password_key=KEY_BASE64)

        assert settings.rum_password_key_bytes == KEY

    def test_key_file_read(self, tmp_path: Path) -> None:
        key_file = tmp_path / "rum.key"
        key_file.write_text(KEY_BASE64 + "\n")

        settings = make_settings(rum_password_cipher="aes-256-cbc", rum_password_key_file=key_file)

        assert settings.rum_password_key_bytes == KEY

    def test_key_from_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("SSO_ENVIRONMENT", "development")
        monkeypatch.setenv("SSO_RUM_PASSWORD_CIPHER", "aes-256-gcm")
        monkeypatch.setenv("SSO_RUM_PASSWORD_KEY", KEY_BASE64)

        settings = Settings()

        assert settings.rum_password_key_bytes == KEY
        assert KEY_BASE64 not in repr(settings)

    def test_short_key_fails(self) -> None:
        short = base64.b64encode(bytes(16)).decode()

        with pytest.raises(ValidationError, match="decodes to 16 bytes") as raised:
            make_settings(rum_password_cipher="aes-256-gcm", rum_password_key=short)

        assert short not in str(raised.value)

    def test_invalid_base64_fails_without_value(self) -> None:
        with pytest.raises(ValidationError, match="not valid Base64") as raised:
            make_settings(rum_password_cipher="aes-256-gcm", rum_password_key="not*a*key*value")

        assert "not*a*key*value" not in str(raised.value)

    def test_missing_key_fails(self) -> None:
        with pytest.raises(ValidationError, match="no key is set"):
            make_settings(rum_password_cipher="aes-256-cbc")

    def test_both_key_sources_fail(self, tmp_path: Path) -> None:
        key_file = tmp_path / "rum.key"
        key_file.write_text(KEY_BASE64)

        with pytest.raises(ValidationError, match="only one of"):
            make_settings(
                rum_password_cipher="aes-256-gcm",
                rum_password_key=KEY_BASE64,
                rum_password_key_file=key_file,
            )

    def test_key_without_cipher_fails(self) -> None:
        with pytest.raises(ValidationError, match="SSO_RUM_PASSWORD_CIPHER is none"):
            make_settings(rum_password_key=KEY_BASE64)

    def test_unreadable_key_file_fails(self, tmp_path: Path) -> None:
        with pytest.raises(ValidationError, match="cannot be read"):
            make_settings(
                rum_password_cipher="aes-256-gcm", rum_password_key_file=tmp_path / "missing.key"
            )

    def test_unknown_cipher_fails(self) -> None:
        with pytest.raises(ValidationError, match="rum_password_cipher"):
            make_settings(rum_password_cipher="aes-128-ecb", rum_password_key=KEY_BASE64)


def verify_count() -> float:
    value = REGISTRY.get_sample_value(
        "sso_password_hashing_duration_seconds_count", {"operation": "verify"}
    )
    return value or 0.0


class TestEncryptedLogin:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(rum_password_cipher="aes-256-gcm", rum_password_key=KEY_BASE64)

    @pytest.fixture
    async def shopper(self, session: AsyncSession, hasher: PasswordHasher) -> User:
        return await make_user(session, hasher, login="cipher@example.com", password=PASSWORD)

    async def test_encrypted_password_signs_in(
        self, client: httpx.AsyncClient, shopper: User
    ) -> None:
        encrypted = gcm_vector(KEY, GCM_IV, PASSWORD)

        response = await client.post(
            "/rum/login",
            content=login_request("cipher@example.com", encrypted),
            headers=basic_auth(),
        )

        root = parse(response.content)
        assert child_text(root, "successful") == "true"
        assert child_text(root, "userKey", "externalReferenceID") == shopper.external_reference_id

    async def test_plain_password_rejected(self, client: httpx.AsyncClient, shopper: User) -> None:
        response = await client.post(
            "/rum/login",
            content=login_request("cipher@example.com", PASSWORD),
            headers=basic_auth(),
        )

        assert child_text(parse(response.content), "errorCode") == "5"

    async def test_undecryptable_same_as_wrong_password(
        self,
        client: httpx.AsyncClient,
        session: AsyncSession,
        shopper: User,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        wrong = gcm_vector(KEY, GCM_IV, "not the password")
        garbled = gcm_vector(OTHER_KEY, GCM_IV, "visible-secret-value")

        wrong_response = await client.post(
            "/rum/login", content=login_request("cipher@example.com", wrong), headers=basic_auth()
        )
        before = verify_count()
        with caplog.at_level(logging.INFO):
            garbled_response = await client.post(
                "/rum/login",
                content=login_request("cipher@example.com", garbled),
                headers=basic_auth(),
            )
        after = verify_count()

        assert garbled_response.content == wrong_response.content
        assert after - before == 1
        assert "rum.password_decryption_failed" in caplog.text
        assert garbled not in caplog.text
        events = (await session.scalars(select(LoginEvent).order_by(LoginEvent.id))).all()
        assert events[-1].reason == "decryption_failed"
        assert events[-1].user_key is None
        assert events[-2].reason == "wrong_password"


class TestEncryptedRegistration:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(rum_password_cipher="aes-256-cbc", rum_password_key=KEY_BASE64)

    async def test_encrypted_password_stored_decrypted(
        self, client: httpx.AsyncClient, session: AsyncSession, hasher: PasswordHasher
    ) -> None:
        body = create_request("new-cipher@example.com", cbc_vector(KEY, CBC_IV, PASSWORD))

        response = await client.post("/rum/create-user", content=body, headers=basic_auth())
        stored = await session.scalar(
            select(User.password_hash).where(User.login == "new-cipher@example.com")
        )

        assert child_text(parse(response.content), "successful") == "true"
        assert stored is not None
        assert (await hasher.verify(PASSWORD, stored)).valid

    async def test_undecryptable_answers_code_31(
        self, client: httpx.AsyncClient, session: AsyncSession
    ) -> None:
        body = create_request("bad-cipher@example.com", cbc_vector(OTHER_KEY, CBC_IV, PASSWORD))

        response = await client.post("/rum/create-user", content=body, headers=basic_auth())
        created = await session.scalar(
            select(User.id).where(User.login == "bad-cipher@example.com")
        )

        root = parse(response.content)
        assert child_text(root, "successful") == "false"
        assert child_text(root, "errorCode") == "31"
        assert created is None
