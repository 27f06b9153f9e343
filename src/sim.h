/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * pycxi software CXI device: extras that only the simulator has (state
 * root, reset, status, consistency check).  The libcxi API itself is
 * declared in include/libcxi/libcxi.h and implemented in sim.c.
 */
#ifndef PYCXI_SIM_H
#define PYCXI_SIM_H

#include <stddef.h>
#include <stdint.h>

#define PYCXI_SIM_DEFAULT_ROOT "/run/pycxi-sim"
#define PYCXI_SIM_MAX_DEVICES 16

struct pycxi_sim_status {
	unsigned int services;		/* including the default service */
	unsigned int enabled_services;
	unsigned int lnis;
	unsigned int profiles;		/* TX/RX profile pairs */
	unsigned int rmu_used;		/* enabled RX profiles (of 256) */
	unsigned int rgids_used;	/* of 255 */
	unsigned int tle_pools_used;	/* of 4 */
	unsigned int le_pools_used;	/* of 16 */
	unsigned int reaped_lnis;	/* LNIs of dead processes released so far */
	unsigned int recoveries;	/* crashed operations rolled back so far */
	uint16_t reserved[8];		/* per cxi_rsrc_type */
};

/* Directory holding the device state files (PYCXI_SIM_ROOT or the default). */
const char *pycxi_sim_root(void);

/* Remove every device under the root and create ndev fresh ones. */
int pycxi_sim_reset(unsigned int ndev);

/* Release LNIs of dead processes, then fill *st. */
int pycxi_sim_get_status(unsigned int dev_id, struct pycxi_sim_status *st);

/*
 * Verify the device's internal invariants (reservations, pools, reference
 * counts).  Returns 0, or -EUCLEAN with a description in msg.
 */
int pycxi_sim_check(unsigned int dev_id, char *msg, size_t len);

#endif /* PYCXI_SIM_H */
