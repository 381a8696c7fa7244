"""Login normalisation and ERID rules."""

from __future__ import annotations

import re

import pytest

from app.identity.errors import InvalidValueError
from app.identity.identifiers import generate_erid, normalize_login, validate_erid


class TestNormalizeLogin:
    def test_case_and_composition_fold_together(self) -> None:
        composed = normalize_login("Émile@Example.com")
        lower = normalize_login("émile@example.com")
        decomposed = normalize_login("E\u0301mile@Example.com")

        assert composed == lower
        assert decomposed == lower

    def test_compatibility_forms_fold(self) -> None:
        assert normalize_login("ＡＢＣ@example.com") == "abc@example.com"

    def test_german_sharp_s_case_folds(self) -> None:
        assert normalize_login("STRASSE") == normalize_login("straße")

    @pytest.mark.parametrize("login", [" a@example.com", "a@example.com ", "\ta", "a\n"])
    def test_surrounding_white_space_rejected(self, login: str) -> None:
        with pytest.raises(InvalidValueError, match="white space") as caught:
            normalize_login(login)

        assert caught.value.field == "login"

    @pytest.mark.parametrize("login", ["a\x00b", "a\u200bb", "a\x7fb"])
    def test_control_and_format_characters_rejected(self, login: str) -> None:
        with pytest.raises(InvalidValueError, match="U\\+"):
            normalize_login(login)

    def test_empty_rejected(self) -> None:
        with pytest.raises(InvalidValueError, match="empty"):
            normalize_login("")

    def test_too_long_rejected(self) -> None:
        with pytest.raises(InvalidValueError, match="256"):
            normalize_login("a" * 257)

    def test_inner_space_kept(self) -> None:
        assert normalize_login("Jane Doe") == "jane doe"


class TestErid:
    @pytest.mark.parametrize(
        "erid", ["D05B4D68-F49D-11DA-8019-88F835DA4C6C", "a", "x.y_z:1@site-2", "A" * 64]
    )
    def test_valid_accepted(self, erid: str) -> None:
        assert validate_erid(erid) == erid

    @pytest.mark.parametrize("erid", ["", "A" * 65, "has space", "é", "a/b", "a\nb", "a,b"])
    def test_invalid_rejected(self, erid: str) -> None:
        with pytest.raises(InvalidValueError) as caught:
            validate_erid(erid)

        assert caught.value.field == "external_reference_id"

    def test_generated_is_upper_case_uuid(self) -> None:
        erid = generate_erid()

        assert re.fullmatch(r"[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}", erid)
        assert validate_erid(erid) == erid
