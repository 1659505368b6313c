#!/usr/bin/env bash
# cargo audit against a local RustSec database, with the reviewed ignore list.
#   ADVISORY_DB=/path/to/advisory-db supply-chain/audit.sh
# Default database: ../shared/advisory-db beside the repository (offline copy). For a fresh
# one: git clone https://github.com/rustsec/advisory-db and point ADVISORY_DB at it.
set -euo pipefail
cd "$(dirname "$0")/.."
db="${ADVISORY_DB:-../shared/advisory-db}"
[ -d "$db/crates" ] || { echo "advisory database not found at $db (set ADVISORY_DB)" >&2; exit 1; }
# A failing check (expired or incomplete entry) stops the script here.
listed=$(python3 - <<'PY'
import datetime, sys, tomllib
with open("supply-chain/advisory-ignores.toml", "rb") as f:
    entries = tomllib.load(f).get("ignore", [])
today = datetime.date.today()
for e in entries:
    for key in ("id", "reason", "expires"):
        if not e.get(key):
            sys.exit(f"advisory-ignores.toml: an entry lacks {key!r}")
    if datetime.date.fromisoformat(str(e["expires"])) < today:
        sys.exit(f"advisory-ignores.toml: the ignore of {e['id']} expired on {e['expires']}; decide again")
    print(e["id"])
PY
)
args=()
for id in $listed; do args+=(--ignore "$id"); done
cargo audit --db "$db" --no-fetch --deny warnings "${args[@]}"
