#!/usr/bin/env bash
# Profiles one cairn-bench scenario group with perf (issue #18 item 1).
#
#   bash bench/profile.sh lifecycle          # or: cqrs, appends, long, ...
#
# Builds cairn-bench with the `profiling` profile (release + debug info), records with
# DWARF call graphs, prints the top symbols by self and by inclusive time, and, when
# `inferno` is installed (`cargo install inferno`), writes a flamegraph SVG. Output goes to
# target/profiles/ (never committed).
set -euo pipefail
group="${1:-lifecycle}"
shift || true
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/target/profiles"
mkdir -p "$out"
command -v perf >/dev/null || { echo "perf is missing: apt-get install linux-perf" >&2; exit 1; }
cargo build --profile profiling -p cairn-bench --manifest-path "$root/Cargo.toml"
data="$out/$group.perf.data"
# 149 Hz keeps the DWARF stacks of a minute-long run in a few hundred MB.
perf record -F 149 --call-graph dwarf,16384 -o "$data" \
  "$root/target/profiling/cairn-bench" --only "$group" --runs 1 "$@" >"$out/$group.bench.txt"
perf report -i "$data" --no-children --sort symbol --stdio -g none --percent-limit 0.7 \
  >"$out/$group.self.txt" 2>/dev/null
perf report -i "$data" --children --sort symbol --stdio -g none --percent-limit 3 \
  >"$out/$group.children.txt" 2>/dev/null
if command -v inferno-collapse-perf >/dev/null; then
  perf script -i "$data" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph >"$out/$group.svg"
  echo "flamegraph: $out/$group.svg"
fi
echo "self time: $out/$group.self.txt; inclusive: $out/$group.children.txt"
