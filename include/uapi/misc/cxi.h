/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* pycxi: installed as <uapi/misc/cxi.h>, like the driver's header. */
#ifndef PYCXI_UAPI_MISC_CXI_H
#define PYCXI_UAPI_MISC_CXI_H
#include "../ethernet/cxi-abi.h"
#endif
