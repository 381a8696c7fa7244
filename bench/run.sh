#!/bin/sh
# Run every benchmark scenario with one command; options are listed by `bench/run.sh --help`.
# Uses the project's virtual environment (.venv), and installs wrk with apt-get when missing.
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
if [ ! -x "$python" ]; then
    echo "no Python at $python: run \`make install\` or set PYTHON" >&2
    exit 2
fi
cd "$root"
exec "$python" "$root/bench/run.py" "$@"
