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
#include <stdbool.h>
#include <stddef.h>
#include <string.h>	/* before libcxi.h: HPE's cxi_prov_hw.h uses memset without it */
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
/*
 * The software device's extras, weakly: a real libcxi has none of them (the
 * calls return -EOPNOTSUPP), while pycxi's software device built as a shared
 * libcxi.so (how CI exercises this path) exports them and they work.
 */
struct pycxi_sim_status {
	unsigned int services, enabled_services, lnis, profiles, rmu_used,
		rgids_used, tle_pools_used, le_pools_used, reaped_lnis,
		recoveries;
	uint16_t reserved[8];
};
extern const char *pycxi_sim_root(void) __attribute__((weak));
extern int pycxi_sim_reset(unsigned int ndev) __attribute__((weak));
extern int pycxi_sim_get_status(unsigned int dev_id, struct pycxi_sim_status *st)
	__attribute__((weak));
extern int pycxi_sim_check(unsigned int dev_id, char *msg, size_t len)
	__attribute__((weak));
#define PYCXI_SIM_WEAK 1
#endif

/* The extras as pycxi calls them (device.pyx): -EOPNOTSUPP where absent. */
static inline const char *pycxi_x_sim_root(void)
{
#ifdef PYCXI_SIM_WEAK
	if (!pycxi_sim_root)
		return "";
#endif
	return pycxi_sim_root();
}
static inline int pycxi_x_sim_reset(unsigned int n)
{
#ifdef PYCXI_SIM_WEAK
	if (!pycxi_sim_reset)
		return -EOPNOTSUPP;
#endif
	return pycxi_sim_reset(n);
}
static inline int pycxi_x_sim_get_status(unsigned int d, struct pycxi_sim_status *s)
{
#ifdef PYCXI_SIM_WEAK
	if (!pycxi_sim_get_status)
		return -EOPNOTSUPP;
#endif
	return pycxi_sim_get_status(d, s);
}
static inline int pycxi_x_sim_check(unsigned int d, char *m, size_t l)
{
#ifdef PYCXI_SIM_WEAK
	if (!pycxi_sim_check)
		return -EOPNOTSUPP;
#endif
	return pycxi_sim_check(d, m, l);
}

/*
 * Service calls that SHS 12.0.x's libcxi lacks (its kernel has no service
 * enable, exclusive CP or VNI range): weak where libcxi is the system's, so
 * that the extension loads against every release and these calls answer
 * -EOPNOTSUPP there.  The prototypes are upstream's (SHS 13.1 and 14.0).
 */
#ifdef PYCXI_SIM_WEAK
extern int cxil_svc_enable(struct cxil_dev *dev, unsigned int svc_id, bool enable)
	__attribute__((weak));
extern int cxil_svc_set_exclusive_cp(struct cxil_dev *dev, unsigned int svc_id,
				     bool exclusive_cp) __attribute__((weak));
extern int cxil_svc_get_exclusive_cp(struct cxil_dev *dev, unsigned int svc_id,
				     bool *exclusive_cp) __attribute__((weak));
extern int cxil_svc_set_vni_range(struct cxil_dev *dev, unsigned int svc_id,
				  uint16_t vni_min, uint16_t vni_max) __attribute__((weak));
extern int cxil_svc_get_vni_range(struct cxil_dev *dev, unsigned int svc_id,
				  uint16_t *vni_min, uint16_t *vni_max) __attribute__((weak));
#define PYCXI_IF_ABSENT(fn)		\
	do {				\
		if (!(fn))		\
			return -EOPNOTSUPP; \
	} while (0)
#else
#define PYCXI_IF_ABSENT(fn) do { } while (0)
#endif
#if !defined(PYCXI_BACKEND_SIM) && !defined(PYCXI_HAVE_TRIG_CP)
/*
 * SHS 12.0.x's libcxi has no triggered CPs: the enum as 13.1 defines it, and the ANY_LCID case
 * (what cxil_alloc_cp is on 13.1 and later) through cxil_alloc_cp; the others -EOPNOTSUPP.
 */
enum cxi_trig_cp { TRIG_LCID, NON_TRIG_LCID, ANY_LCID };
static inline int cxil_alloc_trig_cp(struct cxil_lni *lni, unsigned int vni,
				     enum cxi_traffic_class tc,
				     enum cxi_traffic_class_type tc_type,
				     enum cxi_trig_cp cp_type, struct cxi_cp **cp)
{
	if (cp_type != ANY_LCID)
		return -EOPNOTSUPP;
	return cxil_alloc_cp(lni, vni, tc, tc_type, cp);
}
#endif

static inline int pycxi_x_svc_enable(struct cxil_dev *d, unsigned int s, bool e)
{
	PYCXI_IF_ABSENT(cxil_svc_enable);
	return cxil_svc_enable(d, s, e);
}
static inline int pycxi_x_svc_set_exclusive_cp(struct cxil_dev *d, unsigned int s, bool e)
{
	PYCXI_IF_ABSENT(cxil_svc_set_exclusive_cp);
	return cxil_svc_set_exclusive_cp(d, s, e);
}
static inline int pycxi_x_svc_get_exclusive_cp(struct cxil_dev *d, unsigned int s, bool *e)
{
	PYCXI_IF_ABSENT(cxil_svc_get_exclusive_cp);
	return cxil_svc_get_exclusive_cp(d, s, e);
}
static inline int pycxi_x_svc_set_vni_range(struct cxil_dev *d, unsigned int s,
					    uint16_t lo, uint16_t hi)
{
	PYCXI_IF_ABSENT(cxil_svc_set_vni_range);
	return cxil_svc_set_vni_range(d, s, lo, hi);
}
static inline int pycxi_x_svc_get_vni_range(struct cxil_dev *d, unsigned int s,
					    uint16_t *lo, uint16_t *hi)
{
	PYCXI_IF_ABSENT(cxil_svc_get_vni_range);
	return cxil_svc_get_vni_range(d, s, lo, hi);
}

/* The ABI value of CXI_SVC_MEMBER_NET_NS, also where the header lacks it. */
#define PYCXI_SVC_MEMBER_NET_NS 3

/* Member types for pycxi.libcxi_enums: every flavour's values, NET_NS included. */
enum pycxi_svc_member_type {
	PYCXI_MEMBER_IGNORE = CXI_SVC_MEMBER_IGNORE,
	PYCXI_MEMBER_UID = CXI_SVC_MEMBER_UID,
	PYCXI_MEMBER_GID = CXI_SVC_MEMBER_GID,
	PYCXI_MEMBER_NET_NS = PYCXI_SVC_MEMBER_NET_NS,
};

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


/* The header's flag enums are anonymous: named ones for pycxi.libcxi_enums. */
enum pycxi_map_flags {
	PYCXI_MAP_PIN = CXI_MAP_PIN,
	PYCXI_MAP_ATS = CXI_MAP_ATS,
	PYCXI_MAP_WRITE = CXI_MAP_WRITE,
	PYCXI_MAP_READ = CXI_MAP_READ,
	PYCXI_MAP_FAULT = CXI_MAP_FAULT,
	PYCXI_MAP_NOCACHE = CXI_MAP_NOCACHE,
	PYCXI_MAP_USER_ADDR = CXI_MAP_USER_ADDR,
	PYCXI_MAP_ATS_PT = CXI_MAP_ATS_PT,
	PYCXI_MAP_ATS_DYN = CXI_MAP_ATS_DYN,
	PYCXI_MAP_DEVICE = CXI_MAP_DEVICE,
	PYCXI_MAP_ALLOC_MD = CXI_MAP_ALLOC_MD,
	PYCXI_MAP_PREFETCH = CXI_MAP_PREFETCH,
};
enum pycxi_cq_flags {
	PYCXI_CQ_IS_TX = CXI_CQ_IS_TX,
	PYCXI_CQ_TX_ETHERNET = CXI_CQ_TX_ETHERNET,
	PYCXI_CQ_TX_WITH_TRIG_CMDS = CXI_CQ_TX_WITH_TRIG_CMDS,
};
enum pycxi_eq_flags {
	PYCXI_EQ_PASSTHROUGH = CXI_EQ_PASSTHROUGH,
	PYCXI_EQ_INIT_LONG = CXI_EQ_INIT_LONG,
	PYCXI_EQ_TGT_LONG = CXI_EQ_TGT_LONG,
	PYCXI_EQ_EC_DISABLE = CXI_EQ_EC_DISABLE,
	PYCXI_EQ_REGISTER_PCT = CXI_EQ_REGISTER_PCT,
};

#endif /* PYCXI_COMPAT_H */
