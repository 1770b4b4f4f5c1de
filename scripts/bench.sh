#!/usr/bin/env bash
# Start-up cost of a sandboxed command, measured in one hyperfine run against the
# bare command and against bubblewrap, reported as medians and ratios.
# Usage: scripts/bench.sh [RUNS]   (needs hyperfine and bwrap; installs them with apt-get as root)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-200}
need=()
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v bwrap >/dev/null || need+=(bubblewrap)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "bench: missing ${need[*]}; install them (apt-get install ${need[*]})" >&2
    exit 1
  fi
fi
cargo build --release -q -p workfence-cli
bin=$PWD/target/release/workfence
ws=$(mktemp -d /var/tmp/workfence-bench.XXXXXX)
trap 'rm -rf "$ws"' EXIT
git -C "$ws" init -q
out=$(mktemp)
(cd "$ws" && hyperfine -N --warmup 20 --runs "$runs" --export-json "$out" \
  -n bare '/bin/true' \
  -n workfence "$bin run -- /bin/true" \
  -n bwrap 'bwrap --ro-bind / / --dev /dev --proc /proc --unshare-all /bin/true' >/dev/null)
python3 - "$out" <<'PY'
import json, statistics, sys
r = {x["command"]: statistics.median(x["times"]) * 1000 for x in json.load(open(sys.argv[1]))["results"]}
for k in ("bare", "workfence", "bwrap"):
    print(f"{k:10s} median {r[k]:7.2f} ms")
print(f"workfence / bare  = {r['workfence'] / r['bare']:.1f}x")
print(f"workfence / bwrap = {r['workfence'] / r['bwrap']:.2f}x")
PY
rm -f "$out"
