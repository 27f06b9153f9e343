#!/usr/bin/env bash
# Build and install HPE's real libcxi (with its tools, e.g. cxi_service) from upstream source
# tarballs, optionally with our patches, so that pycxi can be built against it:
#
#   scripts/build-hpe-libcxi.sh SRC_DIR VERSION PREFIX [--driver-patches DIR] [--libcxi-patches DIR]
#
# SRC_DIR ("" or "-": $PYCXI_HPE_SRC) holds, for VERSION (12.0.2, 13.1.0, 14.0.0, ...):
#   shs-libcxi-VERSION.tar.gz              HewlettPackard/shs-libcxi at release/shs-VERSION
#   shs-cassini-headers-VERSION.tar.gz     HewlettPackard/shs-cassini-headers, same release
#   shs-cxi-driver-include-VERSION.tar.gz  the include/ folder of HewlettPackard/shs-cxi-driver
# each unpacking into one folder named after its repository (git archive --prefix=<repo>/).
# Patches (*.patch, applied in name order with git apply -p1): driver patches touch only the
# driver's include/ here (the uapi headers libcxi compiles against; the kernel is not built).
# Afterwards: PKG_CONFIG_PATH=PREFIX/lib/pkgconfig PYCXI_BACKEND=libcxi pip install .
#
# Needs (Debian 12): build-essential autoconf automake libtool pkg-config git libconfig-dev
# libuv1-dev libfuse-dev libyaml-dev libnl-3-dev libnl-genl-3-dev libnuma-dev libsensors-dev
# (scripts/setup-env.sh installs them).  LIBCXI_TESTS=1 also builds upstream's criterion tests
# (libcriterion-dev) and installs them into PREFIX/libexec/libcxi-tests.
set -euo pipefail

usage() { echo "usage: $0 SRC_DIR VERSION PREFIX [--driver-patches DIR] [--libcxi-patches DIR]" >&2; exit 2; }
[ $# -ge 3 ] || usage
src=$1 version=$2 prefix=$3; shift 3
[ -n "$src" ] && [ "$src" != - ] || src=${PYCXI_HPE_SRC:-}
[ -n "$src" ] || { echo "no source directory: pass SRC_DIR or set PYCXI_HPE_SRC" >&2; exit 2; }
src=$(realpath "$src")
prefix=$(realpath -m "$prefix")
driver_patches="" libcxi_patches=""
while [ $# -gt 0 ]; do
  case "$1" in
    --driver-patches) [ $# -ge 2 ] || usage; driver_patches=$(realpath "$2"); shift 2 ;;
    --libcxi-patches) [ $# -ge 2 ] || usage; libcxi_patches=$(realpath "$2"); shift 2 ;;
    *) usage ;;
  esac
done
for t in shs-libcxi shs-cassini-headers shs-cxi-driver-include; do
  [ -f "$src/$t-$version.tar.gz" ] || { echo "missing $src/$t-$version.tar.gz" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/hpe-libcxi-$version.XXXXXX")
trap 'rm -rf "$work"' EXIT
for t in shs-libcxi shs-cassini-headers shs-cxi-driver-include; do
  tar -xzf "$src/$t-$version.tar.gz" -C "$work"
done

# libcxi's configure looks for the driver at ../cxi-driver and for Cassini's installed headers
# at ../cassini-headers/install (a source build's layout): give it that layout.
mv "$work/shs-cxi-driver" "$work/cxi-driver"
mkdir -p "$work/cassini-headers/install"
for d in include share; do
  [ -e "$work/shs-cassini-headers/$d" ] && ln -s "$work/shs-cassini-headers/$d" "$work/cassini-headers/install/$d"
done

apply_series() {  # DIR TREE [git-apply args]
  local dir=$1 tree=$2; shift 2
  local p found=0
  for p in "$dir"/*.patch; do
    [ -e "$p" ] || continue
    found=1
    (cd "$tree" && git apply -p1 "$@" "$p") || { echo "patch does not apply: $p" >&2; exit 1; }
  done
  [ $found = 1 ] || { echo "no *.patch in $dir" >&2; exit 2; }
}
[ -z "$driver_patches" ] || apply_series "$driver_patches" "$work/cxi-driver" --include='include/*'
[ -z "$libcxi_patches" ] || apply_series "$libcxi_patches" "$work/shs-libcxi"

cfg=(--prefix="$prefix" --with-systemd=no --with-udevrulesdir=no)
[ "${LIBCXI_TESTS:-0}" != 1 ] || cfg+=(--with-criterion=/usr)
# Upstream builds with -Werror; GCC 12 flags its tests' new/free pairs (mismatched-dealloc).
export CFLAGS="${CFLAGS:--O2 -g} -Wno-error=mismatched-dealloc"
log=$work/build.log
if ! (cd "$work/shs-libcxi" && ./autogen.sh && ./configure "${cfg[@]}" \
      && make -j"${JOBS:-$(nproc)}" && make install) >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "libcxi $version: build failed" >&2
  exit 1
fi

# libcxi.h includes the driver's uapi headers and Cassini's hardware headers by their bare
# names; a distribution's devel packages install them beside it, so do the same.
mkdir -p "$prefix/include"
cp -r "$work/cxi-driver/include/uapi" "$prefix/include/"
cp "$work/shs-cassini-headers/include/"*.h "$prefix/include/"
if [ "${LIBCXI_TESTS:-0}" = 1 ]; then
  mkdir -p "$prefix/libexec/libcxi-tests"
  find "$work/shs-libcxi/tests" -maxdepth 2 -type f -perm -u+x -name 'libcxi_test*' \
    -exec cp {} "$prefix/libexec/libcxi-tests/" \;
fi
echo "libcxi $version installed in $prefix (PKG_CONFIG_PATH=$prefix/lib/pkgconfig)"
