#!/usr/bin/env bash
# Packs everything loadtest/run.sh needs into one folder, so the suite runs
# on a many-core machine that has no network (and maybe another glibc):
#
#   loadtest/pack-offline.sh [DEST]          # default: dist/loadtest-bundle
#   # copy DEST to the other machine, then there:
#   DEST/loadtest/run.sh --prebuilt DEST --scaling 1,2,4,8
#
# Each program is copied with every shared library `ldd` lists, including
# the dynamic loader, and wrapped so it runs with exactly those libraries.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
DEST=${1:-$ROOT/dist/loadtest-bundle}
cd "$ROOT"
cargo build --release --quiet --bin ringgate --bin ringgate-stub
rm -rf "$DEST"
mkdir -p "$DEST/bin" "$DEST/real" "$DEST/lib"

pack() { # program-path name
    local src=$1 name=$2 lib loader=""
    cp -L "$src" "$DEST/real/$name"
    # Debug info is for profiling here, not for the bundle (64 MiB budget).
    command -v strip >/dev/null && strip --strip-debug "$DEST/real/$name" 2>/dev/null || true
    while read -r lib; do
        [ -n "$lib" ] || continue
        cp -Ln "$lib" "$DEST/lib/" 2>/dev/null || true
        case "$lib" in */ld-linux*) loader=$(basename "$lib") ;; esac
    done < <(ldd "$src" | awk '/=>/ {print $3} /ld-linux/ {print $1}' | grep '^/')
    cat > "$DEST/bin/$name" <<WRAP
#!/bin/sh
here=\$(cd "\$(dirname "\$0")/.." && pwd)
exec "\$here/lib/$loader" --library-path "\$here/lib" "\$here/real/$name" "\$@"
WRAP
    chmod +x "$DEST/bin/$name"
}

pack target/release/ringgate ringgate
pack target/release/ringgate-stub ringgate-stub
for tool in wrk nginx haproxy; do
    command -v "$tool" >/dev/null || { echo "pack-offline: $tool is not installed here (apt-get install wrk nginx-light haproxy)" >&2; exit 2; }
    pack "$(command -v "$tool")" "$tool"
done
OHA=$(command -v oha || echo "$ROOT/target/loadtest-tools/bin/oha")
[ -x "$OHA" ] || { echo "pack-offline: oha missing; run loadtest/run.sh once to install it" >&2; exit 2; }
pack "$OHA" oha

mkdir -p "$DEST/loadtest"
cp -r "$HERE"/run.sh "$HERE"/report.py "$HERE"/idle_conns.py "$HERE"/gateway.toml \
      "$HERE"/peers "$HERE"/scenarios "$HERE"/lua "$DEST/loadtest/"
du -sh "$DEST"
echo "bundle ready: $DEST (run: $DEST/loadtest/run.sh --prebuilt $DEST --scaling 1,2,4,8)"
