#!/usr/bin/env bash
# Build LazyFS (src/: a FUSE file system that loses un-fsynced writes on command) into OUTDIR;
# print the binary's path. Usage: build.sh OUTDIR (the source tree is never written to: the
# build happens in a copy under OUTDIR; a rerun reuses a finished one). Needs the Debian
# packages below and installs the missing ones when run as root; as anyone else it fails
# saying what to install. Nothing is downloaded beside them (see README.md).
set -euo pipefail
out=${1:?usage: build.sh OUTDIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin="$out/src/lazyfs/build/lazyfs"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
need=()
for p in g++ cmake make libfuse3-dev fuse3 libtoml11-dev libspdlog-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  deps="$here/../../scripts/system-deps"  # framefleet's: installs as root, else says what to do
  { [ -x "$deps" ] && "$deps" "${need[@]}"; } || {
    echo "LazyFS's build needs these Debian packages: ${need[*]}" >&2; exit 1; }
fi
mkdir -p "$out"
rm -rf "$out/src" && cp -r "$here/src" "$out/src" && chmod -R u+w "$out/src"
log="$out/build.log"
if ! { (cd "$out/src/libs/libpcache" && mkdir -p build && cd build && cmake .. && cmake --build . -j2) &&
       (cd "$out/src/lazyfs" && mkdir -p build && cd build && cmake -DLAZYFS_BUILD_TESTS=OFF .. && cmake --build . -j2); } >"$log" 2>&1; then
  tail -n 30 "$log" >&2; echo "LazyFS build failed (log: $log)" >&2; exit 1
fi
echo "$bin"
