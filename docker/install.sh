#!/bin/sh
# Build the project's wheel and install it with its dependencies into a new virtual
# environment, at the versions pinned in docker/constraints.txt. The image's builder stage runs
# this, and so does tests/test_container.py, so the install step is exercised without a Docker
# engine.
#
# Usage: docker/install.sh VENV_DIR
# Run it from a directory that contains pyproject.toml, README.md, app/ and
# docker/constraints.txt. PYTHON selects the interpreter (default python3).
set -eu

if [ "$#" -ne 1 ]; then
    echo "usage: $0 VENV_DIR" >&2
    exit 2
fi
venv="$1"
wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT

"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" wheel --no-deps --wheel-dir "$wheels" .
"$venv/bin/pip" install --constraint docker/constraints.txt "$wheels"/*.whl
"$venv/bin/sso-provider" --version
