#!/usr/bin/env bash
# Build the software device's driver front (src/uapi_front.c + src/sim.c) for one libcxi
# install, so that HPE's real libcxi runs on the software device:
#
#   scripts/build-uapi-front.sh LIBCXI_PREFIX OUT.so
#   LD_PRELOAD=OUT.so PYCXI_SIM_ROOT=/some/dir cxi_service list
#
# The front is compiled against the uapi header installed with that libcxi (the command
# numbers and layouts of its release); the device itself against pycxi's own headers.
# Which optional commands the release has is read from that header.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=$(realpath "${1:?LIBCXI_PREFIX}"); out=${2:?OUT.so}
CC=${CC:-gcc}
inc="$prefix/include"
[ -f "$inc/libcxi/libcxi.h" ] || { echo "no libcxi/libcxi.h under $inc" >&2; exit 2; }
abi=""
for h in "$inc/uapi/ethernet/cxi-abi.h" "$inc/uapi/misc/cxi.h"; do   # 13.x+ / 12.0.x
  [ -f "$h" ] && { abi=$h; break; }
done
[ -n "$abi" ] || { echo "no uapi header under $inc/uapi" >&2; exit 2; }
defs=()
grep -q CXI_OP_SVC_ENABLE "$abi" && defs+=(-DFRONT_HAVE_SVC_ENABLE)
grep -q CXI_OP_SVC_SET_NETNS "$abi" && defs+=(-DFRONT_HAVE_NETNS_OPS)
grep -q CXI_OP_TRIG_CP_ALLOC "$abi" && defs+=(-DFRONT_HAVE_TRIG_CP)
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
# The structs that cross between the front and the device must have one layout in both
# header sets (they do for 12.0.2, 13.1.0 and 14.0.0).
cat > "$w/sizes.c" <<'C'
#include <string.h>
#include <stdio.h>
#include <libcxi/libcxi.h>
int main(void)
{
	printf("%zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(struct cxi_svc_desc),
	       sizeof(struct cxi_rsrc_use), sizeof(struct cxi_svc_fail_info),
	       sizeof(struct cxil_devinfo), sizeof(struct cxil_lni), sizeof(struct cxil_domain),
	       sizeof(struct cxi_md), sizeof(struct cxil_pte));
	return 0;
}
C
"$CC" -I"$inc" "$w/sizes.c" -o "$w/theirs" && "$CC" -I"$here/include" "$w/sizes.c" -o "$w/ours" \
  || { echo "cannot compile the layout check" >&2; exit 1; }
[ "$("$w/theirs")" = "$("$w/ours")" ] \
  || { echo "struct layouts differ between $inc and pycxi's headers: $("$w/theirs") vs $("$w/ours")" >&2; exit 1; }
cflags=(-O2 -g -fPIC -Wall -Werror=implicit-function-declaration)
"$CC" "${cflags[@]}" -I"$here/include" -I"$here/src" -c "$here/src/sim.c" -o "$w/sim.o"
"$CC" "${cflags[@]}" -I"$here/include" -c "$here/src/uapi_front_ids.c" -o "$w/ids.o"
"$CC" "${cflags[@]}" "${defs[@]}" -I"$inc" -I"$here/src" -c "$here/src/uapi_front.c" -o "$w/front.o"
cat > "$w/front.map" <<'MAP'
{
  global:
    open; open64; openat; write; close; mmap; mmap64; fopen; fopen64; access; stat; lstat;
    realpath; glob; glob64; pycxi_sim_*;
  local: *;
};
MAP
"$CC" -shared -o "$out" "$w/sim.o" "$w/ids.o" "$w/front.o" -Wl,--version-script="$w/front.map" -ldl -lpthread
echo "built $out (${defs[*]:-no optional commands})"
