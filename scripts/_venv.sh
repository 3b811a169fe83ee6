# Sourced by scripts/serve and scripts/test: make .venv and install a lock file into it, once per
# version of that lock file. Needs only Python 3.11+ as `python3` (or $PYTHON).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "taskplatform needs Python 3.11 or newer as '$python' (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi

ensure_venv() {  # $1: the lock file to install; $2: the project's extras, e.g. "postgres,redis"
  local lock="$1" extra="$2" stamp
  [[ -x .venv/bin/python ]] || "$python" -m venv .venv
  stamp=".venv/.installed-$(cat "$lock" pyproject.toml | "$python" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')"
  if [[ ! -f "$stamp" ]]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$lock"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e ".${extra:+[$extra]}"
    touch "$stamp"
  fi
}
