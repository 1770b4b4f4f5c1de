#!/usr/bin/env bash
# What the sandbox costs, measured with hyperfine against the bare command and against
# bubblewrap in the same run, reported as medians and ratios:
#   start-up      `run -- /bin/true`, back to back and with a pause before each run (the
#                 pause is how agents call it, and it lets per-run kernel work such as
#                 RCU grace periods show)
#   make          `make -j2` of 31 C files (a build: the brokered writes are few)
#   tar           `tar x` of 5,000 small files into the workspace (every file creation is
#                 brokered: the worst case for the write broker)
#   git checkout  switching between two commits that differ in 2,000 files
# hyperfine runs with -N (no shell), prepare commands included: they spell out `sh -c`.
# Usage: scripts/bench.sh [RUNS] [WORKLOAD...]   (RUNS defaults to 30; needs hyperfine
# and bwrap, installed with apt-get as root)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-30}
shift || true
workloads=("$@")
[ "${#workloads[@]}" -gt 0 ] || workloads=(startup make tar git)
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
# The workspace lives on tmpfs when there is one: on a disk, the file system's own
# behaviour (ext4 without a journal scans past recently deleted inodes, so each run
# pays for the files the previous one removed) swamps what the sandbox adds and
# penalises whichever command hyperfine runs later.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    ws=$(mktemp -d /dev/shm/workfence-bench.XXXXXX)
else
    ws=$(mktemp -d /var/tmp/workfence-bench.XXXXXX)
fi
data=$(mktemp -d /var/tmp/workfence-bench-data.XXXXXX)
trap 'rm -rf "$ws" "$data"' EXIT
git -C "$ws" init -q
# bubblewrap with what workfence gives by default: all namespaces, the workspace writable.
bw="bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp --bind $ws $ws --chdir $ws --unshare-all --die-with-parent"

report() { # json
    python3 - "$1" <<'PY'
import json, statistics, sys
res = json.load(open(sys.argv[1]))["results"]
r = {x["command"]: statistics.median(x["times"]) * 1000 for x in res}
bare = r.get("bare")
for k, v in r.items():
    extra = f"   {v / bare:5.2f}x bare  (+{(v / bare - 1) * 100:.1f}%)" if bare and k != "bare" else ""
    print(f"  {k:18s} median {v:8.2f} ms{extra}")
PY
}

bench() { # title, hyperfine args...
    local title=$1 out
    shift
    out=$(mktemp)
    echo "$title"
    (cd "$ws" && hyperfine -N --style none --export-json "$out" "$@" >/dev/null 2>&1)
    report "$out"
    rm -f "$out"
}

for w in "${workloads[@]}"; do
    case $w in
    startup)
        bench "start-up, back to back (run -- /bin/true)" --warmup 10 --runs "$runs" \
            -n bare '/bin/true' -n workfence "$bin run -- /bin/true" -n bwrap "$bw /bin/true"
        bench "start-up, 0.3 s pause before each run" --runs "$runs" --prepare 'sleep 0.3' \
            -n bare '/bin/true' -n workfence "$bin run -- /bin/true" -n bwrap "$bw /bin/true"
        ;;
    make)
        mkdir -p "$ws/proj"
        for i in $(seq 1 31); do
            printf '#include <stdio.h>\n#include <string.h>\n#include <stdlib.h>\nint f%d(int x){char b[64];snprintf(b,64,"%%d",x);return (int)strlen(b)+x*%d;}\n' "$i" "$i" >"$ws/proj/f$i.c"
        done
        printf 'SRCS=$(wildcard *.c)\nall: $(SRCS:.c=.o)\n%%.o: %%.c\n\t$(CC) -O2 -c $< -o $@\n' >"$ws/proj/Makefile"
        bench "make -j2, 31 C files" --warmup 1 --runs "$((runs / 3 + 1))" \
            --prepare "sh -c 'rm -f $ws/proj/*.o'" \
            -n bare "make -s -C $ws/proj -j2" \
            -n workfence "$bin run -- make -s -C $ws/proj -j2" \
            -n bwrap "$bw make -s -C $ws/proj -j2"
        ;;
    tar)
        mkdir -p "$data/src"
        for d in $(seq 1 50); do
            mkdir "$data/src/d$d"
            for f in $(seq 1 100); do echo "$d $f" >"$data/src/d$d/f$f"; done
        done
        tar cf "$data/files.tar" -C "$data/src" .
        mkdir -p "$ws/x"
        bench "tar x, 5,000 small files" --warmup 1 --runs "$((runs / 3 + 1))" \
            --prepare "sh -c 'rm -rf $ws/x && mkdir $ws/x'" \
            -n bare "tar xf $data/files.tar -C $ws/x" \
            -n workfence "$bin run -- tar xf $data/files.tar -C $ws/x" \
            -n bwrap "$bw tar xf $data/files.tar -C $ws/x"
        ;;
    git)
        r="$ws/repo"
        git init -q "$r"
        git -C "$r" config user.email bench@example.invalid
        git -C "$r" config user.name bench
        for d in $(seq 1 20); do
            mkdir -p "$r/d$d"
            for f in $(seq 1 100); do echo "a $d $f" >"$r/d$d/f$f"; done
        done
        git -C "$r" add -A && git -C "$r" commit -qm a && git -C "$r" branch a
        for d in $(seq 1 20); do
            for f in $(seq 1 100); do echo "b $d $f" >"$r/d$d/f$f"; done
        done
        git -C "$r" commit -qam b && git -C "$r" branch b
        # One checkout each way per timed run, so every run starts from branch b.
        bench "git checkout, 2,000 changed files (there and back)" --warmup 1 --runs "$((runs / 3 + 1))" \
            -n bare "sh -c 'git -C $r checkout -q a && git -C $r checkout -q b'" \
            -n workfence "$bin run -C $r -- sh -c 'git checkout -q a && git checkout -q b'" \
            -n bwrap "$bw sh -c 'git -C $r checkout -q a && git -C $r checkout -q b'"
        ;;
    *)
        echo "bench: unknown workload $w (startup, make, tar, git)" >&2
        exit 2
        ;;
    esac
done
