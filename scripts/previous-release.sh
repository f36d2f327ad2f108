#!/usr/bin/env bash
# Builds the orchestrator of the previous release (the commit named in .ci/previous-release)
# with the saga files and topics.json it shipped, into target/previous/<commit>/, and prints that
# folder. The upgrade tests (tests/e2e/upgrade.rs) run it beside this release on one database:
#
#   PREVIOUS_RELEASE_DIR=$(scripts/previous-release.sh) cargo test --test e2e upgrade
#
# It shares target/ with this checkout, so only the project's own crates are compiled again (its
# dependencies are the same builds). Its crates are given another version first: cargo names a
# workspace's artifacts without the folder it lives in, so under the same version the previous
# release's builds would take this checkout's places in target/. Needs the repository's history
# (a clone, not an export).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
commit=$(tr -d '[:space:]' < "$root/.ci/previous-release")
out="$root/target/previous/$commit"
if [ -x "$out/orchestrator" ] && [ -d "$out/sagas" ]; then
  echo "$out"
  exit 0
fi
if ! git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "error: commit $commit (.ci/previous-release) is not in this repository's history" >&2
  exit 1
fi
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
git -C "$root" archive "$commit" | tar -x -C "$src"
sed -i '0,/^version = "[^"]*"/s//version = "0.0.0-previous"/' "$src/Cargo.toml"
grep -q '^version = "0.0.0-previous"' "$src/Cargo.toml" || { echo "error: no workspace version in $src/Cargo.toml" >&2; exit 1; }
echo "building the previous release's orchestrator ($commit)" >&2
# Its binary still lands at target/debug/orchestrator, this checkout's path: take it, and remove
# it so this checkout's next build links its own there again.
CARGO_TARGET_DIR="$root/target" cargo build -q --manifest-path "$src/Cargo.toml" -p saga-system --bin orchestrator >&2
mkdir -p "$out.tmp"
cp "$root/target/debug/orchestrator" "$out.tmp/orchestrator"
rm -f "$root/target/debug/orchestrator"
cp -r "$src/sagas" "$src/topics.json" "$src/messages.toml" "$out.tmp/"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
