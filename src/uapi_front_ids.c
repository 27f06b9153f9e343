/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * The numbers naming the software device's queue objects, read with the device's own
 * struct layouts.  uapi_front.c is compiled against the served libcxi's headers, where
 * struct cxi_eq, cxi_cq and cxi_ct are the Cassini provider's (much larger) ones, so it must
 * not read the device's objects through those types.
 */
#include <libcxi/libcxi.h>

unsigned int pycxi_front_eqn(const void *eq) { return ((const struct cxi_eq *)eq)->eqn; }
unsigned int pycxi_front_cq_idx(const void *cq) { return ((const struct cxi_cq *)cq)->idx; }
unsigned int pycxi_front_ctn(const void *ct) { return ((const struct cxi_ct *)ct)->ctn; }
unsigned int pycxi_front_ptn(const void *pte) { return ((const struct cxil_pte *)pte)->ptn; }
