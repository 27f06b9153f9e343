/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * The software CXI device behind the driver's user interface, so that HPE's real libcxi
 * (and everything built on it: cxi_service, libcxi_test, pycxi built against libcxi) runs
 * on it without a NIC.
 *
 * libcxi talks to the kernel driver in three ways, and this library, preloaded
 * (LD_PRELOAD) into a process, answers all three from the software device of src/sim.c:
 *   - open("/dev/cxiN") and write() of a command struct: an `op` and, for most commands,
 *     a pointer where the driver copies its response.  Each opened fd is one client of the
 *     device (one sim device handle: closing it releases what was allocated through it, as
 *     the driver's release() does).
 *   - mmap() of queue memory at offsets the driver returned: anonymous memory here (the
 *     device moves no data).
 *   - files under /sys/class/cxi_user/cxiN/... and /sys/class/cxi/cxiN/...: served from a
 *     tree of regular files made under $PYCXI_SIM_ROOT from the device's properties.
 * The rules stay in sim.c: every command is decoded into the call the software device
 * implements (cxil_alloc_svc, cxil_alloc_lni, ...), with the caller's own thread, so its
 * credentials and network namespace are what the device checks.
 *
 * It is compiled against the uapi header of the libcxi it serves (the op numbers and
 * layouts are that release's), while sim.c is compiled against pycxi's headers; the two
 * agree on every struct that crosses between them (checked by tests/test_core_abi.py and
 * by the size checks in front_check_abi()).  Only the libc functions below and the
 * pycxi_sim_* extras are exported: the device's cxil_* stay local, so they never shadow
 * the real libcxi's.
 *
 * Feature macros (set by scripts/build-uapi-front.sh from the header):
 *   FRONT_HAVE_SVC_ENABLE   ops SVC_ENABLE, exclusive CP, VNI range (13.x and later)
 *   FRONT_HAVE_NETNS_OPS    ops SVC_SET_NETNS / SVC_GET_NETNS (SHS 14, or our 13.1 patch)
 *   FRONT_HAVE_TRIG_CP      op TRIG_CP_ALLOC
 */
#define _GNU_SOURCE
#include <string.h>	/* before libcxi.h: cxi_prov_hw.h uses memset without it */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libcxi/libcxi.h>
#include "sim.h"

#define EXPORT __attribute__((visibility("default")))
#define MAX_FDS 4096
#define MAX_OBJS 4096

enum obj_kind { OBJ_FREE = 0, OBJ_LNI, OBJ_DOMAIN, OBJ_CP, OBJ_MD, OBJ_EQ, OBJ_CQ, OBJ_PTE, OBJ_CT };

struct obj {
	enum obj_kind kind;
	unsigned int id;	/* what libcxi holds: the table handle, or the object's number */
	void *p;		/* the device's object: cxil_lni, cxil_domain, cxi_cp, ... */
};

/* uapi_front_ids.c: object numbers read with the device's own layouts */
unsigned int pycxi_front_eqn(const void *eq);
unsigned int pycxi_front_cq_idx(const void *cq);
unsigned int pycxi_front_ctn(const void *ct);
unsigned int pycxi_front_ptn(const void *pte);

struct client {
	struct cxil_dev *dev;	/* one device handle of the software device */
	struct obj objs[MAX_OBJS];	/* handle = index + 1 */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct client *clients[MAX_FDS];
static volatile int any_client;	/* fast path for write()/close() of everything else */

/* ---- the real libc functions ---------------------------------------------------- */

#define REAL(name) real_##name
#define DECL_REAL(ret, name, ...) static ret (*real_##name)(__VA_ARGS__)
DECL_REAL(int, open, const char *, int, ...);
DECL_REAL(int, open64, const char *, int, ...);
DECL_REAL(int, openat, int, const char *, int, ...);
DECL_REAL(ssize_t, write, int, const void *, size_t);
DECL_REAL(int, close, int);
DECL_REAL(void *, mmap, void *, size_t, int, int, int, off_t);
DECL_REAL(void *, mmap64, void *, size_t, int, int, int, off_t);
DECL_REAL(FILE *, fopen, const char *, const char *);
DECL_REAL(FILE *, fopen64, const char *, const char *);
DECL_REAL(int, access, const char *, int);
DECL_REAL(char *, realpath, const char *, char *);
DECL_REAL(int, glob, const char *, int, int (*)(const char *, int), glob_t *);
DECL_REAL(int, glob64, const char *, int, int (*)(const char *, int), glob_t *);
DECL_REAL(int, stat, const char *, struct stat *);
DECL_REAL(int, lstat, const char *, struct stat *);

static void resolve(void)
{
#define R(name) if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)
	R(open); R(open64); R(openat); R(write); R(close); R(mmap); R(mmap64);
	R(fopen); R(fopen64); R(access); R(realpath); R(glob); R(glob64); R(stat); R(lstat);
#undef R
}

/* ---- /sys/class/cxi* ------------------------------------------------------------- */

static char sys_root[PATH_MAX];	/* <sim root>/sysfs.<ndev>: the tree of regular files */

static int write_file(const char *path, const char *fmt, ...)
{
	char buf[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	int fd = REAL(open)(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	ssize_t w = REAL(write)(fd, buf, n);
	REAL(close)(fd);
	return w == n ? 0 : -EIO;
}

static int mkdirs(char *path)
{
	for (char *s = path + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = 0;
		if (mkdir(path, 0755) && errno != EEXIST) {
			*s = '/';
			return -errno;
		}
		*s = '/';
	}
	return mkdir(path, 0755) && errno != EEXIST ? -errno : 0;
}

/* The files libcxi's devinfo reads, from the device's own devinfo. */
static int make_dev_tree(const char *top, const struct cxil_devinfo *i)
{
	char d[PATH_MAX], p[PATH_MAX + 64];
	int rc;

	snprintf(d, sizeof(d), "%s/devices/pycxi-sim/0000:%02x:00.0/properties", top, i->dev_id);
	if ((rc = mkdirs(d)))
		return rc;
	snprintf(d, sizeof(d), "%s/devices/pycxi-sim/0000:%02x:00.0", top, i->dev_id);
	snprintf(p, sizeof(p), "%s/drivers/cxi_ss1", top);
	if ((rc = mkdirs(p)))
		return rc;
	snprintf(p, sizeof(p), "%s/driver", d);
	if (symlink("../../../drivers/cxi_ss1", p) && errno != EEXIST)
		return -errno;
	snprintf(p, sizeof(p), "%s/fru", d);
	if ((rc = mkdirs(p)))
		return rc;
#define PROP(name, fmt, val) do { snprintf(p, sizeof(p), "%s/properties/" name, d); \
		if ((rc = write_file(p, fmt "\n", val))) return rc; } while (0)
	PROP("nid", "0x%x", i->nid);
	PROP("pid_bits", "%u", i->pid_bits);
	PROP("pid_count", "%u", i->pid_count);
	PROP("pid_granule", "%u", i->pid_granule);
	PROP("min_free_shift", "%u", i->min_free_shift);
	PROP("rdzv_get_idx", "%u", i->rdzv_get_idx);
	PROP("cassini_version", "%s", "1.1");
	PROP("system_type_identifier", "%u", 0u);
	PROP("rev", "%u", 2u);
	PROP("proto", "%u", 0u);
	PROP("platform", "%u", 0u);
	PROP("uc_nic", "%u", 0u);
	PROP("pct_eq", "%u", 0u);
	PROP("hpc_mtu", "%u", i->link_mtu);
	PROP("speed", "%u", i->link_speed);
	PROP("link", "%u", i->link_state);
	PROP("num_ptes", "%u", i->num_ptes);
	PROP("num_txqs", "%u", i->num_txqs);
	PROP("num_tgqs", "%u", i->num_tgqs);
	PROP("num_eqs", "%u", i->num_eqs);
	PROP("num_cts", "%u", i->num_cts);
	PROP("num_acs", "%u", i->num_acs);
	PROP("num_tles", "%u", i->num_tles);
	PROP("num_les", "%u", i->num_les);
	PROP("amo_remap_to_pcie_fadd", "%d", -1);
#undef PROP
	snprintf(p, sizeof(p), "%s/vendor", d);
	if ((rc = write_file(p, "0x%04x\n", i->vendor_id)))
		return rc;
	snprintf(p, sizeof(p), "%s/device", d);
	if ((rc = write_file(p, "0x%04x\n", i->device_id)))
		return rc;
	snprintf(p, sizeof(p), "%s/fru/description", d);
	if ((rc = write_file(p, "%s\n", i->fru_description)))
		return rc;
	/* class links, as sysfs lays them out */
	for (int c = 0; c < 2; c++) {
		const char *cls = c ? "cxi" : "cxi_user";
		snprintf(p, sizeof(p), "%s/class/%s/%s", top, cls, i->device_name);
		if ((rc = mkdirs(p)))
			return rc;
		snprintf(p, sizeof(p), "%s/class/%s/%s/device", top, cls, i->device_name);
		char target[PATH_MAX];
		snprintf(target, sizeof(target), "../../../devices/pycxi-sim/0000:%02x:00.0",
			 i->dev_id);
		if (symlink(target, p) && errno != EEXIST)
			return -errno;
	}
	return 0;
}

/*
 * Make the tree for the current root and device count (tests and `pycxi sim reset` change
 * both under a running process) under <root>/sysfs.<n>, built in a private directory and
 * renamed into place, so that concurrent processes never see half of it.
 */
static int ensure_sys_tree(void)
{
	struct cxil_device_list *list;
	char want[PATH_MAX], tmp[PATH_MAX + 32];
	struct stat st;
	int rc;

	rc = cxil_get_device_list(&list);
	if (rc)
		return rc;
	snprintf(want, sizeof(want), "%s/sysfs.%u", pycxi_sim_root(), list->count);
	if (!strcmp(want, sys_root) && REAL(stat)(sys_root, &st) == 0) {
		cxil_free_device_list(list);
		return 0;
	}
	if (REAL(stat)(want, &st) == 0) {
		cxil_free_device_list(list);
		strcpy(sys_root, want);
		return 0;
	}
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", want, (int)getpid());
	for (unsigned int k = 0; k < list->count && !rc; k++)
		rc = make_dev_tree(tmp, &list->info[k]);
	cxil_free_device_list(list);
	if (!rc && rename(tmp, want) && errno != ENOTEMPTY && errno != EEXIST)
		rc = -errno;
	if (rc)
		return rc;
	strcpy(sys_root, want);
	return 0;
}

/* The path under the tree for a /sys/class/cxi* path, or NULL for every other path. */
static const char *sys_path(const char *path, char *buf, size_t len)
{
	if (!path || strncmp(path, "/sys/class/cxi", 14))
		return NULL;
	const char *rest = path + 14;
	if (*rest && *rest != '/' && strncmp(rest, "_user", 5))
		return NULL;
	if (ensure_sys_tree())
		return NULL;
	snprintf(buf, len, "%s/class/cxi%s", sys_root, rest);
	return buf;
}

/* ---- /dev/cxiN --------------------------------------------------------------------- */

static int dev_number(const char *path)
{
	if (!path || strncmp(path, "/dev/cxi", 8) || !path[8])
		return -1;
	char *end;
	long n = strtol(path + 8, &end, 10);
	return *end || n < 0 || n >= PYCXI_SIM_MAX_DEVICES ? -1 : (int)n;
}

static int open_dev(int n, int flags)
{
	struct cxil_dev *dev;
	int rc = cxil_open_device(n, &dev);
	if (rc) {
		errno = rc == -ENODEV ? ENOENT : -rc;
		return -1;
	}
	/* a real fd, so that close(), dup() and fork() see a file */
	int fd = REAL(open)("/dev/null", O_RDWR | (flags & O_CLOEXEC));
	if (fd < 0 || fd >= MAX_FDS) {
		int e = fd < 0 ? errno : EMFILE;
		if (fd >= 0)
			REAL(close)(fd);
		cxil_close_device(dev);
		errno = e;
		return -1;
	}
	struct client *c = calloc(1, sizeof(*c));
	if (!c) {
		REAL(close)(fd);
		cxil_close_device(dev);
		errno = ENOMEM;
		return -1;
	}
	c->dev = dev;
	pthread_mutex_lock(&lock);
	clients[fd] = c;
	any_client = 1;
	pthread_mutex_unlock(&lock);
	return fd;
}

static struct client *client_of(int fd)
{
	if (!any_client || fd < 0 || fd >= MAX_FDS)
		return NULL;
	return clients[fd];
}

/* ---- commands --------------------------------------------------------------------- */

/*
 * Record a device object; returns the handle libcxi gets: ``id`` where libcxi uses the
 * object's number as its handle (LNI id, EQ/CQ/CT/PTE numbers), else the table slot + 1.
 */
static int obj_add(struct client *c, enum obj_kind kind, void *p, int id)
{
	for (int i = 0; i < MAX_OBJS; i++)
		if (c->objs[i].kind == OBJ_FREE) {
			c->objs[i].kind = kind;
			c->objs[i].p = p;
			c->objs[i].id = id >= 0 ? (unsigned int)id : (unsigned int)i + 1;
			return (int)c->objs[i].id;
		}
	return -ENOSPC;
}

static void *obj_get(struct client *c, enum obj_kind kind, unsigned int id)
{
	for (int i = 0; i < MAX_OBJS; i++)
		if (c->objs[i].kind == kind && c->objs[i].id == id)
			return c->objs[i].p;
	return NULL;
}

static struct cxil_lni *lni_get(struct client *c, unsigned int id)
{
	return obj_get(c, OBJ_LNI, id);
}

static void obj_del(struct client *c, void *p)
{
	for (int i = 0; i < MAX_OBJS; i++)
		if (c->objs[i].p == p && c->objs[i].kind != OBJ_FREE) {
			c->objs[i].kind = OBJ_FREE;
			c->objs[i].p = NULL;
		}
}

#define CMD(type) const struct type *cmd = buf; if (len < sizeof(*cmd)) return -EINVAL
#define RESP(type, ...) do { \
		struct type r_ = { __VA_ARGS__ }; \
		if (!cmd->resp) \
			return -EFAULT; \
		memcpy(cmd->resp, &r_, sizeof(r_)); \
	} while (0)

static int do_command(struct client *c, const void *buf, size_t len)
{
	const struct cxi_common_cmd *common = buf;
	struct cxil_dev *dev = c->dev;
	int rc;

	if (len < sizeof(common->op))
		return -EINVAL;
	switch (common->op) {
	case CXI_OP_SVC_ALLOC: {
		CMD(cxi_svc_alloc_cmd);
		struct cxi_svc_alloc_resp r = {0};
		rc = cxil_alloc_svc(dev, &cmd->svc_desc, &r.fail_info);
		if (rc >= 0)
			r.svc_id = rc;
		if (cmd->resp)
			memcpy(cmd->resp, &r, sizeof(r));
		return rc < 0 ? rc : 0;
	}
	case CXI_OP_SVC_UPDATE: {
		CMD(cxi_svc_alloc_cmd);	/* libcxi sends the alloc layout for updates */
		struct cxi_svc_alloc_resp r = {0};
		rc = cxil_update_svc(dev, &cmd->svc_desc, &r.fail_info);
		if (cmd->resp)
			memcpy(cmd->resp, &r, sizeof(r));
		return rc;
	}
	case CXI_OP_SVC_DESTROY: {
		CMD(cxi_svc_destroy_cmd);
		return cxil_destroy_svc(dev, cmd->svc_id);
	}
	case CXI_OP_SVC_GET: {
		CMD(cxi_svc_get_cmd);
		struct cxi_svc_get_resp r;
		memset(&r, 0, sizeof(r));
		rc = cxil_get_svc(dev, cmd->svc_id, &r.svc_desc);
		if (!rc && cmd->resp)
			memcpy(cmd->resp, &r, sizeof(r));
		return rc;
	}
	case CXI_OP_SVC_LIST_GET: {
		CMD(cxi_svc_list_get_cmd);
		struct cxil_svc_list *l;
		rc = cxil_get_svc_list(dev, &l);
		if (rc)
			return rc;
		for (unsigned int i = 0; i < l->count && i < cmd->count && cmd->svc_list; i++)
			cmd->svc_list[i] = l->descs[i];
		unsigned int n = l->count;
		cxil_free_svc_list(l);
		RESP(cxi_svc_list_get_resp, .count = n);
		return 0;
	}
	case CXI_OP_SVC_RSRC_GET: {
		CMD(cxi_svc_rsrc_get_cmd);
		struct cxi_svc_rsrc_get_resp r;
		memset(&r, 0, sizeof(r));
		rc = cxil_get_svc_rsrc_use(dev, cmd->svc_id, &r.rsrcs);
		if (!rc && cmd->resp)
			memcpy(cmd->resp, &r, sizeof(r));
		return rc;
	}
	case CXI_OP_SVC_RSRC_LIST_GET: {
		CMD(cxi_svc_rsrc_list_get_cmd);
		struct cxil_svc_rsrc_list *l;
		rc = cxil_get_svc_rsrc_list(dev, &l);
		if (rc)
			return rc;
		for (unsigned int i = 0; i < l->count && i < cmd->count && cmd->rsrc_list; i++)
			cmd->rsrc_list[i] = l->rsrcs[i];
		unsigned int n = l->count;
		cxil_free_svc_rsrc_list(l);
		RESP(cxi_svc_rsrc_list_get_resp, .count = n);
		return 0;
	}
	case CXI_OP_SVC_SET_LPR: {
		CMD(cxi_svc_lpr_cmd);
		return cxil_set_svc_lpr(dev, cmd->svc_id, cmd->lnis_per_rgid);
	}
	case CXI_OP_SVC_GET_LPR: {
		CMD(cxi_svc_lpr_cmd);
		rc = cxil_get_svc_lpr(dev, cmd->svc_id);
		if (rc < 0)
			return rc;
		RESP(cxi_svc_get_value_resp, .value = rc);
		return 0;
	}
#ifdef FRONT_HAVE_SVC_ENABLE
	case CXI_OP_SVC_ENABLE: {
		CMD(cxi_svc_enable_cmd);
		return cxil_svc_enable(dev, cmd->svc_id, cmd->enable);
	}
	case CXI_OP_SVC_SET_EXCLUSIVE_CP: {
		CMD(cxi_svc_set_exclusive_cp_cmd);
		return cxil_svc_set_exclusive_cp(dev, cmd->svc_id, cmd->exclusive_cp);
	}
	case CXI_OP_SVC_GET_EXCLUSIVE_CP: {
		CMD(cxi_svc_get_exclusive_cp_cmd);
		bool v = false;
		rc = cxil_svc_get_exclusive_cp(dev, cmd->svc_id, &v);
		if (rc)
			return rc;
		RESP(cxi_svc_get_value_resp, .value = v);
		return 0;
	}
	case CXI_OP_SVC_SET_VNI_RANGE: {
		CMD(cxi_svc_vni_range_cmd);
		if (cmd->vni_min > 0xffff || cmd->vni_max > 0xffff)
			return -EINVAL;
		return cxil_svc_set_vni_range(dev, cmd->svc_id, cmd->vni_min, cmd->vni_max);
	}
	case CXI_OP_SVC_GET_VNI_RANGE: {
		CMD(cxi_svc_vni_range_cmd);
		uint16_t lo = 0, hi = 0;
		rc = cxil_svc_get_vni_range(dev, cmd->svc_id, &lo, &hi);
		if (rc)
			return rc;
		RESP(cxi_svc_get_vni_range_resp, .vni_min = lo, .vni_max = hi);
		return 0;
	}
#endif
#ifdef FRONT_HAVE_NETNS_OPS
	case CXI_OP_SVC_SET_NETNS: {
		CMD(cxi_svc_set_netns_cmd);
		return cxil_svc_set_netns(dev, cmd->svc_id, cmd->netns);
	}
	case CXI_OP_SVC_GET_NETNS: {
		CMD(cxi_svc_get_netns_cmd);
		unsigned int ns = 0;
		rc = cxil_svc_get_netns(dev, cmd->svc_id, &ns);
		if (rc)
			return rc;
		RESP(cxi_svc_get_value_resp, .value = ns);
		return 0;
	}
#endif
	case CXI_OP_LNI_ALLOC: {
		CMD(cxi_lni_alloc_cmd);
		struct cxil_lni *lni;
		rc = cxil_alloc_lni(dev, &lni, cmd->svc_id);
		if (rc)
			return rc;
		if ((rc = obj_add(c, OBJ_LNI, lni, lni->id)) < 0) {
			cxil_destroy_lni(lni);
			return rc;
		}
		RESP(cxi_lni_alloc_resp, .lni = lni->id);
		return 0;
	}
	case CXI_OP_LNI_FREE: {
		CMD(cxi_lni_free_cmd);
		struct cxil_lni *lni = lni_get(c, cmd->lni);
		if (!lni)
			return -EINVAL;
		rc = cxil_destroy_lni(lni);
		if (!rc)
			obj_del(c, lni);
		return rc;
	}
	case CXI_OP_DOMAIN_ALLOC: {
		CMD(cxi_domain_alloc_cmd);
		struct cxil_lni *lni = lni_get(c, cmd->lni);
		struct cxil_domain *d;
		if (!lni)
			return -EINVAL;
		rc = cxil_alloc_domain(lni, cmd->vni, cmd->pid, &d);
		if (rc)
			return rc;
		if ((rc = obj_add(c, OBJ_DOMAIN, d, -1)) < 0) {
			cxil_destroy_domain(d);
			return rc;
		}
		RESP(cxi_domain_alloc_resp, .domain = rc, .vni = d->vni, .pid = d->pid);
		return 0;
	}
	case CXI_OP_DOMAIN_FREE: {
		CMD(cxi_domain_free_cmd);
		struct cxil_domain *d = obj_get(c, OBJ_DOMAIN, cmd->domain);
		if (!d)
			return -EINVAL;
		rc = cxil_destroy_domain(d);
		if (!rc)
			obj_del(c, d);
		return rc;
	}
	case CXI_OP_CP_ALLOC: {
		CMD(cxi_cp_alloc_cmd);
		struct cxil_lni *lni = lni_get(c, cmd->lni);
		struct cxi_cp *cp;
		if (!lni)
			return -EINVAL;
		rc = cxil_alloc_cp(lni, cmd->vni, cmd->tc, cmd->tc_type, &cp);
		if (rc)
			return rc;
		if ((rc = obj_add(c, OBJ_CP, cp, -1)) < 0) {
			cxil_destroy_cp(cp);
			return rc;
		}
		RESP(cxi_cp_alloc_resp, .cp_hndl = rc, .lcid = cp->lcid);
		return 0;
	}
#ifdef FRONT_HAVE_TRIG_CP
	case CXI_OP_TRIG_CP_ALLOC: {
		CMD(cxi_trig_cp_alloc_cmd);
		struct cxil_lni *lni = lni_get(c, cmd->lni);
		struct cxi_cp *cp;
		if (!lni)
			return -EINVAL;
		rc = cxil_alloc_trig_cp(lni, cmd->vni, cmd->tc, cmd->tc_type, cmd->cp_type, &cp);
		if (rc)
			return rc;
		if ((rc = obj_add(c, OBJ_CP, cp, -1)) < 0) {
			cxil_destroy_cp(cp);
			return rc;
		}
		RESP(cxi_cp_alloc_resp, .cp_hndl = rc, .lcid = cp->lcid);
		return 0;
	}
#endif
	case CXI_OP_CP_FREE: {
		CMD(cxi_cp_free_cmd);
		struct cxi_cp *cp = obj_get(c, OBJ_CP, cmd->cp_hndl);
		if (!cp)
			return -EINVAL;
		rc = cxil_destroy_cp(cp);
		if (!rc)
			obj_del(c, cp);
		return rc;
	}
	case CXI_OP_ATU_MAP: {
		CMD(cxi_atu_map_cmd);
		struct cxil_lni *lni = lni_get(c, cmd->lni);
		struct cxi_md *md;
		struct cxi_md_hints hints = cmd->hints;
		if (!lni)
			return -EINVAL;
		rc = cxil_map(lni, (void *)(uintptr_t)cmd->va, cmd->len, cmd->flags, &hints, &md);
		if (rc)
			return rc;
		if ((rc = obj_add(c, OBJ_MD, md, -1)) < 0) {
			cxil_unmap(md);
			return rc;
		}
		RESP(cxi_atu_map_resp, .id = rc, .md = *md);
		return 0;
	}
	case CXI_OP_ATU_UNMAP: {
		CMD(cxi_atu_unmap_cmd);
		struct cxi_md *md = obj_get(c, OBJ_MD, cmd->id);
		if (!md)
			return -EINVAL;
		rc = cxil_unmap(md);
		if (!rc)
			obj_del(c, md);
		return rc;
	}
	case CXI_OP_EQ_ALLOC: {
		CMD(cxi_eq_alloc_cmd);
		struct cxil_lni *lni = lni_get(c, cmd->lni);
		struct cxi_md *md = NULL;
		struct cxi_eq *eq;
		if (!lni)
			return -EINVAL;
		if (cmd->queue_md != CXI_MD_NONE && !(md = obj_get(c, OBJ_MD, cmd->queue_md)))
			return -EINVAL;
		if (cmd->event_wait != CXI_WAIT_NONE || cmd->status_wait != CXI_WAIT_NONE)
			return -EOPNOTSUPP;	/* wait objects (interrupts) are not modelled */
		rc = cxil_alloc_evtq(lni, md, &cmd->attr, NULL, NULL, &eq);
		if (rc)
			return rc;
		if ((rc = obj_add(c, OBJ_EQ, eq, pycxi_front_eqn(eq))) < 0) {
			cxil_destroy_evtq(eq);
			return rc;
		}
		RESP(cxi_eq_alloc_resp, .eq = rc, .csr = { .offset = 0, .size = 4096 });
		return 0;
	}
	case CXI_OP_EQ_FREE: {
		CMD(cxi_eq_free_cmd);
		struct cxi_eq *eq = obj_get(c, OBJ_EQ, cmd->eq);
		if (!eq)
			return -EINVAL;
		rc = cxil_destroy_evtq(eq);
		if (!rc)
			obj_del(c, eq);
		return rc;
	}
	case CXI_OP_PTE_ALLOC: {
		CMD(cxi_pte_alloc_cmd);
		struct cxil_lni *lni = lni_get(c, cmd->lni_hndl);
		struct cxi_eq *eq = NULL;
		struct cxi_pt_alloc_opts opts = cmd->opts;
		struct cxil_pte *pte;
		if (!lni)
			return -EINVAL;
		if (cmd->evtq_hndl != C_EQ_NONE && !(eq = obj_get(c, OBJ_EQ, cmd->evtq_hndl)))
			return -EINVAL;
		rc = cxil_alloc_pte(lni, eq, &opts, &pte);
		if (rc)
			return rc;
		if ((rc = obj_add(c, OBJ_PTE, pte, pycxi_front_ptn(pte))) < 0) {
			cxil_destroy_pte(pte);
			return rc;
		}
		RESP(cxi_pte_alloc_resp, .pte_number = rc);
		return 0;
	}
	case CXI_OP_PTE_FREE: {
		CMD(cxi_pte_free_cmd);
		struct cxil_pte *pte = obj_get(c, OBJ_PTE, cmd->pte_number);
		if (!pte)
			return -EINVAL;
		rc = cxil_destroy_pte(pte);
		if (!rc)
			obj_del(c, pte);
		return rc;
	}
	case CXI_OP_CQ_ALLOC: {
		CMD(cxi_cq_alloc_cmd);
		struct cxil_lni *lni = lni_get(c, cmd->lni);
		struct cxi_eq *eq = NULL;
		struct cxi_cq *cq;
		if (!lni)
			return -EINVAL;
		if (cmd->eq != C_EQ_NONE && !(eq = obj_get(c, OBJ_EQ, cmd->eq)))
			return -EINVAL;
		rc = cxil_alloc_cmdq(lni, eq, &cmd->opts, &cq);
		if (rc)
			return rc;
		if ((rc = obj_add(c, OBJ_CQ, cq, pycxi_front_cq_idx(cq))) < 0) {
			cxil_destroy_cmdq(cq);
			return rc;
		}
		/* queue memory for the mmap()s that follow: anonymous, nothing is read from it */
		RESP(cxi_cq_alloc_resp, .cq = rc, .count = cmd->opts.count,
		     .cmds = { .offset = 0, .size = ((size_t)cmd->opts.count * 64 + 4095) & ~4095UL },
		     .wp_addr = { .offset = 0, .size = 4096 });
		return 0;
	}
	case CXI_OP_CQ_FREE: {
		CMD(cxi_cq_free_cmd);
		struct cxi_cq *cq = obj_get(c, OBJ_CQ, cmd->cq);
		if (!cq)
			return -EINVAL;
		rc = cxil_destroy_cmdq(cq);
		if (!rc)
			obj_del(c, cq);
		return rc;
	}
	case CXI_OP_CT_ALLOC: {
		CMD(cxi_ct_alloc_cmd);
		struct cxil_lni *lni = lni_get(c, cmd->lni);
		struct cxi_ct *ct;
		if (!lni)
			return -EINVAL;
		rc = cxil_alloc_ct(lni, cmd->wb, &ct);
		if (rc)
			return rc;
		if ((rc = obj_add(c, OBJ_CT, ct, pycxi_front_ctn(ct))) < 0) {
			cxil_destroy_ct(ct);
			return rc;
		}
		RESP(cxi_ct_alloc_resp, .ctn = rc, .doorbell = { .offset = 0, .size = 4096 });
		return 0;
	}
	case CXI_OP_CT_FREE: {
		CMD(cxi_ct_free_cmd);
		struct cxi_ct *ct = obj_get(c, OBJ_CT, cmd->ctn);
		if (!ct)
			return -EINVAL;
		rc = cxil_destroy_ct(ct);
		if (!rc)
			obj_del(c, ct);
		return rc;
	}
	default:
		/* a command the software device does not model (data path, telemetry, SBUS) */
		return -EOPNOTSUPP;
	}
}

/* ---- the interposed libc functions --------------------------------------------------- */

EXPORT ssize_t write(int fd, const void *buf, size_t len)
{
	struct client *c = client_of(fd);
	if (!c) {
		if (!REAL(write))
			resolve();
		return REAL(write)(fd, buf, len);
	}
	int rc = do_command(c, buf, len);
	if (rc < 0) {
		errno = -rc;
		return -1;
	}
	return len;
}

EXPORT int close(int fd)
{
	struct client *c = client_of(fd);
	if (!REAL(close))
		resolve();
	if (c) {
		pthread_mutex_lock(&lock);
		clients[fd] = NULL;
		pthread_mutex_unlock(&lock);
		/* the driver's release(): everything allocated through this client goes */
		cxil_close_device(c->dev);
		free(c);
	}
	return REAL(close)(fd);
}

static int open_common(const char *path, int flags, mode_t mode,
		       int (*real)(const char *, int, ...))
{
	char buf[PATH_MAX];
	int n = dev_number(path);
	if (n >= 0)
		return open_dev(n, flags);
	const char *p = sys_path(path, buf, sizeof(buf));
	return real(p ? p : path, flags, mode);
}

EXPORT int open(const char *path, int flags, ...)
{
	mode_t mode = 0;
	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	resolve();
	return open_common(path, flags, mode, REAL(open));
}

EXPORT int open64(const char *path, int flags, ...)
{
	mode_t mode = 0;
	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	resolve();
	return open_common(path, flags, mode, REAL(open64));
}

EXPORT int openat(int dirfd, const char *path, int flags, ...)
{
	mode_t mode = 0;
	char buf[PATH_MAX];
	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	resolve();
	int n = dev_number(path);
	if (n >= 0)
		return open_dev(n, flags);
	const char *p = sys_path(path, buf, sizeof(buf));
	return REAL(openat)(dirfd, p ? p : path, flags, mode);
}

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	resolve();
	if (client_of(fd))	/* queue memory: the device moves no data */
		return REAL(mmap)(addr, len, prot, (flags & ~MAP_FILE) | MAP_ANONYMOUS, -1, 0);
	return REAL(mmap)(addr, len, prot, flags, fd, off);
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	resolve();
	if (client_of(fd))
		return REAL(mmap64)(addr, len, prot, (flags & ~MAP_FILE) | MAP_ANONYMOUS, -1, 0);
	return REAL(mmap64)(addr, len, prot, flags, fd, off);
}

EXPORT FILE *fopen(const char *path, const char *mode)
{
	char buf[PATH_MAX];
	resolve();
	const char *p = sys_path(path, buf, sizeof(buf));
	return REAL(fopen)(p ? p : path, mode);
}

EXPORT FILE *fopen64(const char *path, const char *mode)
{
	char buf[PATH_MAX];
	resolve();
	const char *p = sys_path(path, buf, sizeof(buf));
	return REAL(fopen64)(p ? p : path, mode);
}

EXPORT int access(const char *path, int how)
{
	char buf[PATH_MAX];
	resolve();
	int n = dev_number(path);
	if (n >= 0) {
		struct cxil_dev *dev;
		if (cxil_open_device(n, &dev)) {
			errno = ENOENT;
			return -1;
		}
		cxil_close_device(dev);
		return 0;
	}
	const char *p = sys_path(path, buf, sizeof(buf));
	return REAL(access)(p ? p : path, how);
}

EXPORT int stat(const char *path, struct stat *st)
{
	char buf[PATH_MAX];
	resolve();
	const char *p = sys_path(path, buf, sizeof(buf));
	return REAL(stat)(p ? p : path, st);
}

EXPORT int lstat(const char *path, struct stat *st)
{
	char buf[PATH_MAX];
	resolve();
	const char *p = sys_path(path, buf, sizeof(buf));
	return REAL(lstat)(p ? p : path, st);
}

EXPORT char *realpath(const char *path, char *out)
{
	char buf[PATH_MAX];
	resolve();
	const char *p = sys_path(path, buf, sizeof(buf));
	return REAL(realpath)(p ? p : path, out);
}

/* glob: the pattern is looked up in the tree; the names are given back as /sys/class/...,
 * since libcxi parses the device number after the fixed prefix. */
static int glob_common(const char *pat, int flags, int (*errfunc)(const char *, int),
		       glob_t *g, int (*real)(const char *, int,
					      int (*)(const char *, int), glob_t *))
{
	char buf[PATH_MAX];
	const char *p = sys_path(pat, buf, sizeof(buf));
	int rc = real(p ? p : pat, flags, errfunc, g);
	if (!p || rc)
		return rc;
	size_t skip = strlen(sys_root) + strlen("/class");	/* -> "/cxi..." */
	for (size_t i = g->gl_offs; i < g->gl_offs + g->gl_pathc; i++) {
		char *old = g->gl_pathv[i], *new;
		if (asprintf(&new, "/sys/class%s", old + skip) < 0)
			return GLOB_NOSPACE;
		g->gl_pathv[i] = new;
		free(old);
	}
	return 0;
}

EXPORT int glob(const char *pat, int flags, int (*errfunc)(const char *, int), glob_t *g)
{
	resolve();
	return glob_common(pat, flags, errfunc, g, REAL(glob));
}

/* glob64_t has glob_t's layout on 64-bit targets (only its callbacks' types differ) */
EXPORT int glob64(const char *pat, int flags, int (*errfunc)(const char *, int), glob64_t *g)
{
	resolve();
	return glob_common(pat, flags, errfunc, (glob_t *)g, REAL(glob64));
}

__attribute__((constructor)) static void front_init(void)
{
	resolve();
}
