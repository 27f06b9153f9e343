/*
 * pycxi build shim: one interface over the libcxi flavours.
 *
 * PYCXI_BACKEND_SIM: the software device (src/), which has both netns methods.
 * Otherwise setup.py probes the system headers and defines
 *   PYCXI_HAVE_SET_NETNS     cxil_svc_set_netns exists (SHS 14, patched 13.x)
 *   PYCXI_HAVE_MEMBER_NETNS  descriptor members of type NET_NS carry an inode
 *                            (union cxi_svc_member has .netns: patched 12/13.x)
 * Where the platform cannot, the calls return -EOPNOTSUPP.
 */
#ifndef PYCXI_COMPAT_H
#define PYCXI_COMPAT_H

#include <errno.h>
#include <stdint.h>
#include <stddef.h>
#include <libcxi/libcxi.h>

#ifdef PYCXI_BACKEND_SIM
#include "sim.h"
#define PYCXI_BACKEND_NAME "sim"
#ifndef PYCXI_HAVE_SET_NETNS
#define PYCXI_HAVE_SET_NETNS 1
#endif
#ifndef PYCXI_HAVE_MEMBER_NETNS
#define PYCXI_HAVE_MEMBER_NETNS 1
#endif
#else
#define PYCXI_BACKEND_NAME "libcxi"
struct pycxi_sim_status {
	unsigned int services, enabled_services, lnis, profiles, rmu_used,
		rgids_used, tle_pools_used, le_pools_used, reaped_lnis,
		recoveries;
	uint16_t reserved[8];
};
static inline const char *pycxi_sim_root(void) { return ""; }
static inline int pycxi_sim_reset(unsigned int n) { (void)n; return -EOPNOTSUPP; }
static inline int pycxi_sim_get_status(unsigned int d, struct pycxi_sim_status *s)
{ (void)d; (void)s; return -EOPNOTSUPP; }
static inline int pycxi_sim_check(unsigned int d, char *m, size_t l)
{ (void)d; (void)m; (void)l; return -EOPNOTSUPP; }
#endif

/* The ABI value of CXI_SVC_MEMBER_NET_NS, also where the header lacks it. */
#define PYCXI_SVC_MEMBER_NET_NS 3

#ifdef PYCXI_HAVE_MEMBER_NETNS
#define PYCXI_HAVE_MEMBER_NETNS_VALUE 1
#else
#define PYCXI_HAVE_MEMBER_NETNS_VALUE 0
#endif

#ifdef PYCXI_HAVE_SET_NETNS
#define PYCXI_HAVE_SET_NETNS_VALUE 1
static inline int pycxi_svc_set_netns(struct cxil_dev *dev, unsigned int svc_id,
				      unsigned int netns)
{
	return cxil_svc_set_netns(dev, svc_id, netns);
}
static inline int pycxi_svc_get_netns(struct cxil_dev *dev, unsigned int svc_id,
				      unsigned int *netns)
{
	return cxil_svc_get_netns(dev, svc_id, netns);
}
#else
#define PYCXI_HAVE_SET_NETNS_VALUE 0
static inline int pycxi_svc_set_netns(struct cxil_dev *dev, unsigned int svc_id,
				      unsigned int netns)
{
	(void)dev; (void)svc_id; (void)netns;
	return -EOPNOTSUPP;
}
static inline int pycxi_svc_get_netns(struct cxil_dev *dev, unsigned int svc_id,
				      unsigned int *netns)
{
	(void)dev; (void)svc_id; (void)netns;
	return -EOPNOTSUPP;
}
#endif

/* Member access through the union's first field: uid, gid and netns share it. */
static inline unsigned int pycxi_member_value(const struct cxi_svc_desc *d, int i)
{
	return d->members[i].svc_member.uid;
}
static inline int pycxi_member_type(const struct cxi_svc_desc *d, int i)
{
	return (int)d->members[i].type;
}
static inline void pycxi_member_set(struct cxi_svc_desc *d, int i, int type,
				    unsigned int value)
{
	d->members[i].type = (enum cxi_svc_member_type)type;
	d->members[i].svc_member.uid = value;
}

#endif /* PYCXI_COMPAT_H */
