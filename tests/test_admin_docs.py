"""The OpenAPI document and the self-hosted /docs and /redoc pages."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute

from app.admin.routes import router as admin_router
from app.problems import PROBLEM_MEDIA_TYPE, problem_types_router

ASSET_RE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")

CHANGE_ERRORS = {"401", "403", "404", "409", "412", "422"}
EXPECTED_ERRORS = {
    "createUser": {"401", "403", "409", "422"},
    "listUsers": {"401", "403", "422"},
    "lookupUser": {"401", "403", "404", "422"},
    "getUser": {"401", "403", "404", "422"},
    "updateUser": CHANGE_ERRORS,
    "disableUser": CHANGE_ERRORS,
    "enableUser": CHANGE_ERRORS,
    "setUserPassword": CHANGE_ERRORS,
    "eraseUser": CHANGE_ERRORS,
    "listAuditEvents": {"401", "403", "422"},
}


@pytest.fixture
async def openapi(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def routes_of(router: APIRouter) -> set[tuple[str, str]]:
    return {
        (route.path, method.lower())
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }


# The users and audit endpoints; other modules add their own routes under /admin/v1.
OWN_ROUTES = routes_of(admin_router) | routes_of(problem_types_router)


def admin_operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, operations in openapi["paths"].items()
        for method, operation in operations.items()
        if (path, method) in OWN_ROUTES and path.startswith("/admin/v1/")
    ]


class TestDocsPages:
    @pytest.mark.parametrize("page", ["/docs", "/redoc"])
    async def test_assets_served_locally(self, client: httpx.AsyncClient, page: str) -> None:
        response = await client.get(page)

        assert response.status_code == 200
        assets = ASSET_RE.findall(response.text)
        assert assets
        for asset in assets:
            assert asset.startswith("/static-offline-docs/"), asset
            served = await client.get(asset)
            assert served.status_code == 200, asset
            assert len(served.content) > 1000
        assert "cdn" not in response.text.lower()
        assert "fonts.googleapis" not in response.text

    async def test_swagger_page_points_at_local_schema(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/docs")

        assert "'/openapi.json'" in response.text or '"/openapi.json"' in response.text
        assert '"validatorUrl": null' in response.text


class TestOpenApiDocument:
    def test_tags_described(self, openapi: dict[str, Any]) -> None:
        tags = {tag["name"]: tag.get("description", "") for tag in openapi["tags"]}

        for name in ("Users", "Audit events", "Digital River callbacks", "Problem types"):
            assert tags.get(name), name

    def test_bearer_scheme(self, openapi: dict[str, Any]) -> None:
        scheme = openapi["components"]["securitySchemes"]["ApiKey"]

        assert scheme["type"] == "http"
        assert scheme["scheme"] == "bearer"

    def test_every_admin_operation_secured_and_tagged(self, openapi: dict[str, Any]) -> None:
        operations = admin_operations(openapi)

        assert len(operations) == 10
        for path, method, operation in operations:
            assert operation["security"], (path, method)
            assert list(operation["security"][0]) == ["ApiKey"]
            assert operation["tags"][0] in ("Users", "Audit events")
            assert operation.get("summary"), (path, method)
            assert operation.get("description"), (path, method)

    def test_error_responses_documented(self, openapi: dict[str, Any]) -> None:
        documented_operations = set()
        for path, method, operation in admin_operations(openapi):
            documented = set(operation["responses"])
            expected = EXPECTED_ERRORS[operation["operationId"]] | {"500", "503"}
            documented_operations.add(operation["operationId"])
            assert expected <= documented, (path, method, expected - documented)
            for status in documented - {"200", "201"}:
                content = operation["responses"][status]["content"]
                assert list(content) == [PROBLEM_MEDIA_TYPE], (path, method, status)
                schema = content[PROBLEM_MEDIA_TYPE]["schema"]
                assert {"type", "title", "status", "detail", "code", "errors"} <= set(
                    schema["properties"]
                )
                assert content[PROBLEM_MEDIA_TYPE]["example"]["status"] == int(status)
        assert documented_operations == set(EXPECTED_ERRORS)

    def test_create_documents_conflict(self, openapi: dict[str, Any]) -> None:
        responses = openapi["paths"]["/admin/v1/users"]["post"]["responses"]

        assert "409" in responses
        assert set(responses["201"]["headers"]) == {"ETag", "Location"}

    def test_if_match_documented(self, openapi: dict[str, Any]) -> None:
        operation = openapi["paths"]["/admin/v1/users/{user_key}"]["patch"]

        header = next(p for p in operation["parameters"] if p["in"] == "header")
        assert header["name"] == "If-Match"
        assert header["required"] is False

    def test_schemas_have_examples(self, openapi: dict[str, Any]) -> None:
        schemas = openapi["components"]["schemas"]
        referenced: set[str] = set()

        def collect(node: Any) -> None:
            if isinstance(node, dict):
                reference = node.get("$ref")
                if isinstance(reference, str):
                    name = reference.rsplit("/", 1)[-1]
                    if name not in referenced:
                        referenced.add(name)
                        collect(schemas[name])
                for value in node.values():
                    collect(value)
            elif isinstance(node, list):
                for item in node:
                    collect(item)

        for path, operations in openapi["paths"].items():
            for method, operation in operations.items():
                if (path, method) in OWN_ROUTES:
                    collect(operation)

        assert {"UserCreate", "UserRead", "UserPatch", "Address", "UserPage"} <= referenced
        missing = sorted(name for name in referenced if "examples" not in schemas[name])
        assert missing == []

    def test_patch_hides_rejected_fields(self, openapi: dict[str, Any]) -> None:
        properties = openapi["components"]["schemas"]["UserPatch"]["properties"]

        for field in ("user_key", "external_reference_id", "status", "password"):
            assert field not in properties
        assert "login" in properties
