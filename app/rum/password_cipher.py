"""Decrypt the `password` element of Digital River's Login and Create requests.

Digital River (DR) can encrypt the shopper's password with a symmetric key agreed in advance.
DR names AES as the algorithm but publishes no mode, IV or encoding, so the format is
configured with ``SSO_RUM_PASSWORD_CIPHER`` and agreed with DR per integration:

``aes-256-gcm``
    Base64 of ``IV (12 bytes) ‖ ciphertext ‖ tag (16 bytes)``. No associated data.
``aes-256-cbc``
    Base64 of ``IV (16 bytes) ‖ ciphertext``, the plaintext padded with PKCS#7 to a multiple of
    16 bytes. CBC has no integrity check, so a changed ciphertext decrypts to a changed password
    (which then fails to verify) instead of being rejected.

The plaintext is the password in UTF-8. Base64 is the standard alphabet of RFC 4648 with ``=``
padding; white space anywhere in the value is ignored. The key is 32 bytes, configured as Base64
in ``SSO_RUM_PASSWORD_KEY`` or in the file named by ``SSO_RUM_PASSWORD_KEY_FILE``.

At run time this module imports nothing from the application, so the settings can use it to
check the key when the service starts.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    # For annotations only: app.settings imports this module to check the key at startup.
    from app.settings import Settings

logger = logging.getLogger(__name__)

CipherName = Literal["none", "aes-256-gcm", "aes-256-cbc"]

KEY_BYTES: Final = 32
GCM_IV_BYTES: Final = 12
GCM_TAG_BYTES: Final = 16
CBC_IV_BYTES: Final = 16
CBC_BLOCK_BYTES: Final = 16

_WHITESPACE: Final = re.compile(r"[ \t\r\n]+")


class PasswordKeyError(ValueError):
    """A configured key that is missing, unreadable or not Base64 of 32 bytes."""


class PasswordDecryptionError(Exception):
    """A password value that does not decrypt with the configured cipher and key.

    The message names the failed step only; it never contains the value or the key.
    """


def decode_key(text: str, source: str) -> bytes:
    """Return the 32-byte key written as Base64 in `text`; `source` names the setting in errors."""
    compact = _WHITESPACE.sub("", text)
    try:
        key = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise PasswordKeyError(
            f"{source} is not valid Base64: write the 32-byte key as standard Base64 "
            "(44 characters ending in '='), for example from `openssl rand -base64 32`"
        ) from None
    if len(key) != KEY_BYTES:
        raise PasswordKeyError(
            f"{source} decodes to {len(key)} bytes, but AES-256 needs a key of exactly "
            f"{KEY_BYTES} bytes"
        )
    return key


def read_key_file(path: Path) -> bytes:
    """Return the key stored as Base64 text in the file at `path`."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "not ASCII"
        raise PasswordKeyError(
            f"SSO_RUM_PASSWORD_KEY_FILE {str(path)!r} cannot be read ({reason})"
        ) from None
    return decode_key(text, f"the key in SSO_RUM_PASSWORD_KEY_FILE {str(path)!r}")


def _decode_value(value: str) -> bytes:
    try:
        return base64.b64decode(_WHITESPACE.sub("", value), validate=True)
    except (binascii.Error, ValueError):
        raise PasswordDecryptionError("the password is not valid Base64") from None


def _decode_plaintext(plaintext: bytes) -> str:
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        raise PasswordDecryptionError("the decrypted password is not UTF-8") from None


def decrypt_gcm(key: bytes, value: str) -> str:
    """Decrypt Base64(IV ‖ ciphertext ‖ tag) with AES-256-GCM and return the password."""
    data = _decode_value(value)
    if len(data) < GCM_IV_BYTES + GCM_TAG_BYTES:
        raise PasswordDecryptionError("the value is shorter than an IV and a tag")
    iv, sealed = data[:GCM_IV_BYTES], data[GCM_IV_BYTES:]
    try:
        plaintext = AESGCM(key).decrypt(iv, sealed, None)
    except InvalidTag:
        raise PasswordDecryptionError("the authentication tag does not match") from None
    return _decode_plaintext(plaintext)


def decrypt_cbc(key: bytes, value: str) -> str:
    """Decrypt Base64(IV ‖ ciphertext) with AES-256-CBC and return the unpadded password."""
    data = _decode_value(value)
    ciphertext_length = len(data) - CBC_IV_BYTES
    if ciphertext_length < CBC_BLOCK_BYTES or ciphertext_length % CBC_BLOCK_BYTES:
        raise PasswordDecryptionError(
            "the ciphertext after the IV is not a whole number of 16-byte blocks"
        )
    iv, ciphertext = data[:CBC_IV_BYTES], data[CBC_IV_BYTES:]
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(CBC_BLOCK_BYTES * 8).unpadder()
    try:
        plaintext = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise PasswordDecryptionError("the PKCS#7 padding is invalid") from None
    return _decode_plaintext(plaintext)


def encrypt_gcm(key: bytes, password: str, iv: bytes | None = None) -> str:
    """Encrypt `password` in the AES-256-GCM format; a random IV is drawn unless one is given."""
    iv = os.urandom(GCM_IV_BYTES) if iv is None else iv
    if len(iv) != GCM_IV_BYTES:
        raise ValueError(f"the GCM IV must be {GCM_IV_BYTES} bytes, got {len(iv)}")
    sealed = AESGCM(key).encrypt(iv, password.encode("utf-8"), None)
    return base64.b64encode(iv + sealed).decode("ascii")


def encrypt_cbc(key: bytes, password: str, iv: bytes | None = None) -> str:
    """Encrypt `password` in the AES-256-CBC format; a random IV is drawn unless one is given."""
    iv = os.urandom(CBC_IV_BYTES) if iv is None else iv
    if len(iv) != CBC_IV_BYTES:
        raise ValueError(f"the CBC IV must be {CBC_IV_BYTES} bytes, got {len(iv)}")
    padder = padding.PKCS7(CBC_BLOCK_BYTES * 8).padder()
    padded = padder.update(password.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    return base64.b64encode(iv + ciphertext).decode("ascii")


def decrypt_password(cipher: CipherName, key: bytes | None, value: str) -> str:
    """Return the plain password: `value` itself when `cipher` is "none", else its decryption.

    Raises:
        PasswordDecryptionError: the value is not Base64, too short, fails the GCM tag or the
            CBC padding check, or does not decrypt to UTF-8.
        ValueError: a cipher is configured but `key` is None (the settings prevent this).
    """
    if cipher == "none":
        return value
    if key is None:
        raise ValueError(f"SSO_RUM_PASSWORD_CIPHER is {cipher} but no key is loaded")
    if cipher == "aes-256-gcm":
        return decrypt_gcm(key, value)
    return decrypt_cbc(key, value)


def decrypt_request_password(settings: Settings, value: str, message_name: str) -> str | None:
    """Return the plain password of a DR request, or None when it does not decrypt.

    The failure is logged with `message_name` and the failed step, never with the value.
    """
    try:
        return decrypt_password(
            settings.rum_password_cipher, settings.rum_password_key_bytes, value
        )
    except PasswordDecryptionError as error:
        logger.warning("rum.password_decryption_failed message=%s reason=%s", message_name, error)
        return None
