/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * pycxi software CXI device.
 *
 * Implements the libcxi service API (include/libcxi/libcxi.h) with the rules
 * of the Cassini driver (docs/library.md, "The software CXI device"): SHS 13.1
 * behaviour plus network-namespace support, both as a NET_NS descriptor
 * member (patched 12/13.x flavour) and through set_netns (SHS 14 flavour).
 *
 * State is shared by every process on the machine, like a kernel driver's:
 * one file per device under $PYCXI_SIM_ROOT, mapped MAP_SHARED and guarded by
 * a process-shared robust mutex stored in the file.  Crash safety: every
 * write to the state is preceded by saving the old bytes in an undo journal
 * inside the same mapping; the journal is cleared when an operation
 * completes.  A process killed at any instruction leaves the mutex
 * EOWNERDEAD, and the next locker replays the journal backwards.  The same
 * journal unwinds failed operations, which is how the driver's "on any error
 * everything is unwound" is kept.  LNIs belong to a (pid, start time); those
 * of dead processes are released lazily, like the kernel does on fd close.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#include <linux/capability.h>
#include <linux/magic.h>

#include "libcxi/libcxi.h"
#include "sim.h"

#define SIM_MAGIC 0x3130494358435950ULL /* "PYCXCI01" */
#define SIM_VERSION 6

#define MAX_SVC 1024
#define MAX_PROF 4096
#define MAX_LNI 2048
#define MAX_CHILD 4096
#define MAX_NETNS 8		/* netns entries per AC list */
#define JBUF_SIZE (2 * 1024 * 1024)

#define NUM_TLE_POOLS 4		/* C_CQ_CFG_TLE_POOL_ENTRIES */
#define NUM_LE_POOLS 16		/* C_LPE_CFG_PE_LE_POOLS_ENTRIES / C_PE_COUNT */
#define RMU_ENTRIES 256		/* C_RMU_CFG_VNI_LIST_ENTRIES */
#define NUM_RGIDS 255		/* C_NUM_RGIDS - 1 */
#define MIN_POOL_TLES 8		/* CASS_MIN_POOL_TLES */
#define DEFAULT_SVC_TLES 512
#define MAX_LPR 8		/* C_NUM_LACS */
#define PID_BITS 9
#define PID_COUNT ((1u << PID_BITS) - 1)
#define AC_INVALID 0xFFFFFFFFu
#define PROC_USER_INIT_INO 0xEFFFFFFDu
#define PROC_PID_INIT_INO 0xEFFFFFFCu
#define PROC_NET_INIT_INO 0xEFFFFFF9u	/* Linux >= 6.18 */
#define OVERFLOW_ID 65534		/* overflowuid/overflowgid default */
#define UNKNOWN_ID 0xFFFFFFFFu		/* INVALID_UID: no AC entry can hold it */
#define CAP_BIT_SYS_ADMIN 21
#define CAP_BIT_NET_RAW 13

static const uint16_t dev_totals[CXI_RSRC_TYPE_MAX] = {
	[CXI_RSRC_TYPE_PTE] = 2048, [CXI_RSRC_TYPE_TXQ] = 1024,
	[CXI_RSRC_TYPE_TGQ] = 512,  [CXI_RSRC_TYPE_EQ] = 2047,
	[CXI_RSRC_TYPE_CT] = 2047,  [CXI_RSRC_TYPE_LE] = 16384,
	[CXI_RSRC_TYPE_TLE] = 2048, [CXI_RSRC_TYPE_AC] = 1022,
};

/* An access-control list: the rgroup's or a profile's. */
struct ac_list {
	uint8_t open;
	uint8_t nuid, ngid, nnetns;
	uint32_t uid[CXI_SVC_MAX_MEMBERS];
	uint32_t gid[CXI_SVC_MAX_MEMBERS];
	uint32_t netns[MAX_NETNS];
};

struct sim_svc {
	uint8_t used;
	uint8_t enabled;		/* rgroup state */
	int8_t tle_pool;		/* -1: none */
	int8_t le_pool;			/* -1: none; same pool on every PE */
	uint32_t lpr;
	uint32_t nlni;			/* rgroup refcount - 1 */
	uint32_t nrgid;			/* RGIDs held by its LNIs */
	int32_t prof[CXI_SVC_MAX_VNIS];	/* profile pair per VNI slot, -1 */
	uint64_t seq;			/* creation order (13.1 list order) */
	struct ac_list ac;
	struct cxi_svc_desc desc;	/* the stored descriptor */
};

/* A TX profile and an RX profile with the same match/ignore, kept as a pair. */
struct sim_prof {
	uint8_t used;
	uint8_t enabled;
	uint8_t exclusive_cp;
	uint8_t tc_mask;		/* TX tc_table */
	uint16_t match, ignore;
	uint32_t owner;			/* svc_id; 0 = root's auto-created one */
	uint32_t refs;			/* domains and CPs using it */
	struct ac_list ac;
};

struct sim_lni {
	uint8_t used;
	uint32_t svc_id;
	uint32_t nchild;
	int32_t pid;			/* for diagnostics only: pid namespaces differ */
	uint64_t owner;			/* token of the device handle (see owner_alive) */
	uint64_t serial;
};

enum { CHILD_DOMAIN = 1, CHILD_CP = 2 };

struct sim_child {
	uint8_t used;
	uint8_t kind;
	uint16_t vni;
	uint32_t pid;			/* domain PID */
	int32_t lni;			/* index into lni[] */
	int32_t prof;			/* -1 for ETH CPs */
	uint64_t serial;
	uint8_t lcid, tc, tc_type;	/* CPs */
};

#define MAX_OBJ 16384		/* MDs, ACs, EQs, PTEs, CQs, CTs on all LNIs */

/* An object on an LNI that the application allocated (see "Objects"). */
struct sim_obj {
	uint8_t used;
	uint8_t kind;			/* OBJ_* */
	uint8_t parked;			/* destroyed, still charged (driver cleanup lists) */
	uint8_t lac;			/* AC, MD: the AC's logical address context */
	int32_t lni;			/* index into lni[] */
	int32_t ref;			/* MD: its AC; EQ: its MD; PTE, CQ: its EQ; or -1 */
	uint32_t refs;			/* live objects referring to this one */
	uint32_t flags;			/* AC: masked map flags; MD, CQ: flags */
	uint64_t serial;
};

/* Resource accounting (cass_alloc_resource) and the objects behind it. */
struct sim_rsrc {
	uint16_t in_use[MAX_SVC][CXI_RSRC_TYPE_MAX];	/* per service */
	uint16_t shared_use[CXI_RSRC_TYPE_MAX];		/* above reservations */
	uint16_t hw_in_use[CXI_RSRC_TYPE_MAX];		/* hardware IDs taken */
	uint32_t obj_hw;
	struct sim_obj obj[MAX_OBJ];
};

struct sim_state {
	uint64_t seq;
	uint64_t serial;
	uint16_t reserved[CXI_RSRC_TYPE_MAX];	/* LE: per PE (all PEs alike) */
	uint16_t tle_pools;			/* bitmap */
	uint16_t le_pools;			/* bitmap */
	uint32_t rmu_used;
	uint32_t rgids_used;
	uint32_t svc_hw, prof_hw, lni_hw, child_hw;	/* high-water marks */
	uint32_t reaped_lnis;
	struct sim_svc svc[MAX_SVC];		/* svc[i] has ID i + 1 */
	struct sim_prof prof[MAX_PROF];
	struct sim_lni lni[MAX_LNI];
	struct sim_child child[MAX_CHILD];
	struct sim_rsrc rsrc;			/* objects on LNIs (see "Objects") */
};

struct sim_journal {
	uint32_t used;			/* bytes of valid entries */
	uint8_t buf[JBUF_SIZE];
};

/* Device flags, fixed when the device is created. */
#define SIM_STRICT_VNI_OVERLAP 1u	/* 13.1/14.0.0: any profile overlap is EEXIST */
#define SIM_STOCK_ROOT_PROFILE 2u	/* unpatched: root's implicit profile in any netns */

struct sim_file {
	uint64_t magic;
	uint32_t version;
	uint32_t dev_id;
	uint32_t flags;
	uint32_t recoveries;
	pthread_mutex_t lock;
	struct sim_journal j;
	struct sim_state st;
};

struct jent {
	uint32_t off;
	uint32_t len;
};

/* One mapped device per process. */
struct simdev {
	struct sim_file *f;
	ino_t ino;
	dev_t fsdev;
	unsigned int dev_id;
	char owners[PATH_MAX];		/* <root>/.owners: LNI owner tokens */
};

struct sim_dev_handle {
	struct cxil_dev pub;		/* first: libcxi's struct is what callers see */
	struct simdev *sd;
	struct sim_lni_handle *lnis;	/* freed on close, like an fd close */
	int tok_fd;			/* owner token, flocked while the handle lives */
	uint64_t tok;
};

struct sim_lni_handle {
	struct cxil_lni pub;
	struct sim_dev_handle *dev;
	struct sim_lni_handle *next;
	int32_t idx;
	uint64_t serial;
	uint32_t nchild;		/* open child handles */
};

struct sim_domain_handle {
	struct cxil_domain pub;
	struct sim_lni_handle *lni;
	int32_t idx;
	uint64_t serial;
};

struct sim_cp_handle {
	struct cxi_cp pub;
	struct sim_lni_handle *lni;
	int32_t idx;
	uint64_t serial;
};

static pthread_mutex_t proc_lock = PTHREAD_MUTEX_INITIALIZER;
static struct simdev *mapped[PYCXI_SIM_MAX_DEVICES];

/* ------------------------------------------------------------------ */
/* Fault injection: PYCXI_SIM_CRASHPOINT=N kills this process at its N-th
 * journalled write, so tests can crash an operation at every step. */
static long crash_at = -1;
static long crash_count;
static int crash_ready;		/* cleared in a fork()ed child: it counts anew */

static void crash_forked(void)
{
	crash_ready = 0;
}

static void crash_atfork(void)
{
	pthread_atfork(NULL, NULL, crash_forked);
}

/* Called with the device lock held.  Fork detection without a getpid() per
 * call (a syscall: ~1.5 us on a VM, as much as a whole operation). */
static void crash_init(void)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	if (crash_ready)
		return;
	pthread_once(&once, crash_atfork);
	const char *s = getenv("PYCXI_SIM_CRASHPOINT");
	crash_at = s ? atol(s) : -1;
	crash_count = 0;
	crash_ready = 1;
}

/* ------------------------------------------------------------------ */
/* Journal */

static void jsave(struct sim_file *f, const void *p, size_t len)
{
	struct sim_journal *j = &f->j;
	size_t off = (const char *)p - (const char *)f;
	uint32_t size = (uint32_t)(sizeof(struct jent) + len + sizeof(uint32_t));

	if (j->used + size > JBUF_SIZE)
		abort();	/* a model bug: no operation touches this much */
	struct jent e = { (uint32_t)off, (uint32_t)len };
	memcpy(j->buf + j->used, &e, sizeof(e));
	memcpy(j->buf + j->used + sizeof(e), p, len);
	/* a trailer holding the entry size lets rollback walk backwards */
	memcpy(j->buf + j->used + sizeof(e) + len, &size, sizeof(size));
	/* The entry must be complete before it counts, and count before the
	 * data it protects changes. */
	__atomic_store_n(&j->used, j->used + size, __ATOMIC_RELEASE);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (crash_at >= 0 && ++crash_count == crash_at)
		raise(SIGKILL);
}

#define J(f, ptr) jsave((f), (ptr), sizeof(*(ptr)))

static void jrollback(struct sim_file *f)
{
	struct sim_journal *j = &f->j;
	uint32_t pos = j->used;

	/* newest first, so overlapping saves restore the oldest bytes */
	while (pos > 0) {
		uint32_t size;
		struct jent e;
		memcpy(&size, j->buf + pos - sizeof(size), sizeof(size));
		pos -= size;
		memcpy(&e, j->buf + pos, sizeof(e));
		memcpy((char *)f + e.off, j->buf + pos + sizeof(e), e.len);
	}
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	__atomic_store_n(&j->used, 0, __ATOMIC_RELEASE);
}

static void jcommit(struct sim_file *f)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	__atomic_store_n(&f->j.used, 0, __ATOMIC_RELEASE);
}

/*
 * The state file is writable by every local user (like /dev/cxiN is openable
 * by every user), so anyone can take the mutex and keep it.  The wait is
 * bounded (PYCXI_SIM_LOCK_TIMEOUT seconds, default 5) and ends in -EAGAIN:
 * "try again", not a hang that no signal can interrupt.
 */
static struct timespec lock_deadline(void)
{
	static double timeout = -1;
	struct timespec ts;

	if (timeout < 0) {
		const char *s = getenv("PYCXI_SIM_LOCK_TIMEOUT");
		char *end;
		double t = s && *s ? strtod(s, &end) : 5.0;
		timeout = (s && *s && (*end || !(t >= 0) || t > 86400)) ? 5.0 : t;
	}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	time_t sec = (time_t)timeout;
	ts.tv_sec += sec;
	ts.tv_nsec += (long)((timeout - (double)sec) * 1e9);
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

static int sim_lock(struct sim_file *f)
{
	int rc = pthread_mutex_trylock(&f->lock);

	if (rc == EBUSY) {
		struct timespec ts = lock_deadline();
		rc = pthread_mutex_clocklock(&f->lock, CLOCK_MONOTONIC, &ts);
		if (rc == ETIMEDOUT)
			return -EAGAIN;
	}

	if (rc == EOWNERDEAD) {
		/* The previous owner died mid-operation: undo it. */
		jrollback(f);
		f->recoveries++;
		pthread_mutex_consistent(&f->lock);
	} else if (rc) {
		return -rc;
	} else if (f->j.used) {
		jrollback(f);
		f->recoveries++;
	}
	crash_init();
	return 0;
}

/* Commit or unwind, then unlock; returns rc for tail calls. */
static int sim_unlock(struct sim_file *f, int rc)
{
	if (rc < 0)
		jrollback(f);
	else
		jcommit(f);
	pthread_mutex_unlock(&f->lock);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Caller credentials, read from the calling thread at each call. */

/*
 * Namespace files are trusted only on nsfs (a file faked on another filesystem
 * is refused).  nsfs is one kernel-internal superblock, so all its files share
 * one st_dev: the first namespace file this process reads is proven to be on
 * nsfs with fstatfs() and its st_dev kept; after that a single stat() per
 * check, comparing st_dev, says the same.  (On a 2-core VM, one stat() of a
 * namespace link costs ~5 us, open/fstat/fstatfs/close ~8 us; capget ~0.3 us.)
 */
static dev_t nsfs_dev;
static int nsfs_known;

static int ns_stat_slow(const char *path, struct stat *sb)
{
	struct statfs sf;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	int bad = fstat(fd, sb) || fstatfs(fd, &sf) || sf.f_type != NSFS_MAGIC;
	close(fd);
	if (bad)
		return -1;
	nsfs_dev = sb->st_dev;
	__atomic_store_n(&nsfs_known, 1, __ATOMIC_RELEASE);
	return 0;
}

/* stat() a namespace file (/proc/.../ns/...): 0 if it is on nsfs, else -1. */
static int ns_stat(const char *path, struct stat *sb)
{
	if (!__atomic_load_n(&nsfs_known, __ATOMIC_ACQUIRE))
		return ns_stat_slow(path, sb);
	if (stat(path, sb))
		return -1;
	return sb->st_dev == nsfs_dev ? 0 : -1;
}

/* All threads of a process share its user namespace (unshare and setns of one
 * need a single-threaded caller), and /proc/self is the shorter walk. */
#define USERNS_PATH "/proc/self/ns/user"

static int in_init_userns(void)
{
	struct stat sb;

	return ns_stat(USERNS_PATH, &sb) == 0 &&
	       sb.st_ino == PROC_USER_INIT_INO;
}

static int has_cap(int bit)
{
	struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct data[2];

	if (syscall(SYS_capget, &hdr, data))
		return 0;
	if (!(data[bit / 32].effective & (1u << (bit % 32))))
		return 0;
	/* capable() asks about the initial user namespace.  Asked at every
	 * call: a single-threaded process may unshare(CLONE_NEWUSER) between
	 * two calls and then holds every capability -- in its own namespace. */
	return in_init_userns();
}

/* The calling thread's netns inode; 0 (matches no AC entry) if unknown. */
static uint32_t cur_netns(void)
{
	struct stat sb;

	if (ns_stat("/proc/thread-self/ns/net", &sb))
		return 0;
	return (uint32_t)sb.st_ino;
}

/*
 * Is a caller in init_net?  Since Linux 6.18 init_net has a fixed inode
 * number; before, it is numbered like any namespace and pid 1 of the initial
 * pid namespace tells (it cannot be found from another pid namespace, and
 * reading it needs ptrace access: unknown counts as "no").
 */
static int in_init_net(uint32_t netns)
{
	struct stat sb;

	if (netns == PROC_NET_INIT_INO)
		return 1;
	if (ns_stat("/proc/self/ns/pid", &sb) || sb.st_ino != PROC_PID_INIT_INO)
		return 0;
	if (ns_stat("/proc/1/ns/net", &sb))
		return 0;
	return netns && sb.st_ino == netns;
}

/* A caller's ids; its netns is read only if a check needs it (creds_netns). */
struct creds {
	uint32_t euid, egid;
	uint32_t netns;
	int netns_read;
};

static uint32_t creds_netns(struct creds *c)
{
	if (!c->netns_read) {
		c->netns = cur_netns();
		c->netns_read = 1;
	}
	return c->netns;
}

static uint32_t read_overflow(const char *path)
{
	char buf[16] = "";
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd >= 0) {
		ssize_t n = read(fd, buf, sizeof(buf) - 1);
		buf[n > 0 ? n : 0] = 0;
		close(fd);
	}
	return *buf ? (uint32_t)strtoul(buf, NULL, 10) : OVERFLOW_ID;
}

/* Map id through a uid_map/gid_map read from inside (one level up); 0 if
 * it is not in the map. */
static int map_up(const char *map, size_t len, uint32_t id, uint32_t *out)
{
	const char *p = map, *end = map + len;

	while (p < end) {
		unsigned long first, lower, count;
		int n = 0;
		if (sscanf(p, " %lu %lu %lu%n", &first, &lower, &count, &n) != 3)
			return 0;
		if (id >= first && id - first < count) {
			*out = (uint32_t)(lower + (id - first));
			return 1;
		}
		p = memchr(p + n, '\n', (size_t)(end - p - n));
		if (!p)
			break;
		p++;
	}
	return 0;
}

/*
 * A caller's global id (__kuid_val), from its id in a non-initial user
 * namespace.  The kernel shows a namespace only its own map, one level up,
 * and hides its ancestry, so the parent is taken for the initial namespace
 * only when a landmark proves it: nsfs inodes belong to global root, and
 * where the caller sees them owned (landmark) must map to 0 one level up.
 * A namespace that does not map global root, or a nested one, cannot be
 * resolved: its callers get an id that no AC entry can hold (not the
 * overflow id 65534, which a member may name): denied, never granted.  (A
 * nested namespace passes only if an ancestor maps its 0 to global 0, which
 * only global root can set up -- and global root can be any uid anyway.)
 */
static uint32_t global_id(const char *path, uint32_t id, uint32_t landmark,
			  uint32_t overflow)
{
	char map[4096];
	uint32_t g, root;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return UNKNOWN_ID;
	ssize_t n = read(fd, map, sizeof(map) - 1);
	close(fd);
	if (n <= 0)
		return UNKNOWN_ID;
	map[n] = 0;
	if (landmark == overflow || !map_up(map, (size_t)n, landmark, &root) ||
	    root != 0 || !map_up(map, (size_t)n, id, &g))
		return UNKNOWN_ID;
	return g;
}

/* The kernel compares global ids: a user namespace's root is not root. */
static void get_creds(struct creds *c)
{
	struct stat sb;
	int ok = ns_stat(USERNS_PATH, &sb) == 0;

	c->netns_read = 0;
	c->euid = geteuid();
	c->egid = getegid();
	if (ok && sb.st_ino == PROC_USER_INIT_INO)
		return;
	if (!ok) {
		c->euid = c->egid = UNKNOWN_ID;
		return;
	}
	c->euid = global_id("/proc/thread-self/uid_map", c->euid, sb.st_uid,
			    read_overflow("/proc/sys/kernel/overflowuid"));
	c->egid = global_id("/proc/thread-self/gid_map", c->egid, sb.st_gid,
			    read_overflow("/proc/sys/kernel/overflowgid"));
}

/*
 * LNI owners.  The kernel frees an LNI when the fd it was allocated through is
 * closed, by whoever, for whatever reason.  The model gives each device handle
 * an owner token: a file under <root>/.owners that the handle keeps flock()ed.
 * The lock goes when the last holder of that open file goes -- a close, an
 * exit, a SIGKILL -- and a fork()ed child shares it like it shares an fd.
 * Unlike pids, this works across pid namespaces (containers).
 */
static void token_path(char *buf, size_t len, const char *owners, uint64_t tok)
{
	snprintf(buf, len, "%s/%016llx", owners, (unsigned long long)tok);
}

/* Create the handle's token (once, at its first LNI). */
static int handle_token(struct sim_dev_handle *h)
{
	char tmp[PATH_MAX + 64], path[PATH_MAX + 32];
	uint64_t tok;

	if (h->tok_fd >= 0)
		return 0;
	if (getrandom(&tok, sizeof(tok), 0) != sizeof(tok))
		return -EIO;
	token_path(path, sizeof(path), h->sd->owners, tok);
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	/* locked before it has its name: nobody sees an unlocked token */
	if (flock(fd, LOCK_EX) || rename(tmp, path)) {
		int rc = -errno;
		unlink(tmp);
		close(fd);
		return rc;
	}
	h->tok_fd = fd;
	h->tok = tok;
	return 0;
}

static void handle_token_release(struct sim_dev_handle *h)
{
	char path[PATH_MAX + 32];

	if (h->tok_fd < 0)
		return;
	token_path(path, sizeof(path), h->sd->owners, h->tok);
	unlink(path);
	close(h->tok_fd);
	h->tok_fd = -1;
}

static int owner_alive(const struct simdev *sd, const struct sim_lni *l)
{
	char path[PATH_MAX + 32];

	token_path(path, sizeof(path), sd->owners, l->owner);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno != ENOENT;	/* unreadable: assume alive */
	int alive = flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
	if (!alive)
		unlink(path);	/* its holders are all gone */
	close(fd);
	return alive;
}

/* ------------------------------------------------------------------ */
/* AC lists (cxi_ac_entry_list) */

static int ac_has(const uint32_t *v, unsigned n, uint32_t x)
{
	for (unsigned i = 0; i < n; i++)
		if (v[i] == x)
			return 1;
	return 0;
}

/* Insert an entry of a member type; same errnos as the driver. */
static int ac_insert(struct ac_list *ac, int type, uint32_t val)
{
	uint32_t *set;
	uint8_t *n;
	unsigned int cap = CXI_SVC_MAX_MEMBERS;

	switch (type) {
	case CXI_SVC_MEMBER_UID:
		set = ac->uid, n = &ac->nuid;
		break;
	case CXI_SVC_MEMBER_GID:
		set = ac->gid, n = &ac->ngid;
		break;
	case CXI_SVC_MEMBER_NET_NS:
		set = ac->netns, n = &ac->nnetns, cap = MAX_NETNS;
		break;
	default:
		return -EINVAL;
	}
	if (val == AC_INVALID)
		return -EBADR;
	if (ac_has(set, *n, val))
		return -EEXIST;
	if (*n >= cap)
		return -ENOSPC;
	set[(*n)++] = val;
	return 0;
}

/* cxi_ac_entry_list_retrieve_by_user: uid, gid, netns (if any), open. */
static int ac_grants(const struct ac_list *ac, struct creds *c)
{
	if (ac_has(ac->uid, ac->nuid, c->euid))
		return 1;
	if (ac_has(ac->gid, ac->ngid, c->egid))
		return 1;
	if (ac->nnetns && ac_has(ac->netns, ac->nnetns, creds_netns(c)))
		return 1;
	return ac->open;
}

/* The member ACs of a descriptor (alloc step 4 / profile ACs of step 5). */
static int ac_from_members(struct ac_list *ac, const struct cxi_svc_desc *d)
{
	memset(ac, 0, sizeof(*ac));
	if (!d->restricted_members) {
		ac->open = 1;
		return 0;
	}
	for (int i = 0; i < CXI_SVC_MAX_MEMBERS; i++) {
		int type = d->members[i].type;
		if (type == CXI_SVC_MEMBER_IGNORE)
			continue;
		int rc = ac_insert(ac, type, d->members[i].svc_member.uid);
		if (rc)
			return rc;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* State helpers (caller holds the lock) */

static struct sim_svc *svc_get(struct sim_state *st, unsigned int id)
{
	if (id < 1 || id > MAX_SVC || id > st->svc_hw)
		return NULL;
	struct sim_svc *s = &st->svc[id - 1];
	return s->used ? s : NULL;
}

static int profiles_overlap(uint16_t m1, uint16_t i1, uint16_t m2, uint16_t i2)
{
	return ((m1 ^ m2) & (uint16_t)~(i1 | i2)) == 0;
}

/*
 * Would a new profile clash with an existing one (disabled ones included)?
 * Any overlap does on 13.1 and 14.0.0.  Our 13.x patches carry the rule of
 * upstream fd6adba: two exact-VNI profiles may overlap, which is what lets
 * several pods of one job on a node each have a service on the job's VNI.
 * PYCXI_SIM_STRICT_VNI_OVERLAP=1 at device creation restores the old rule.
 */
static int prof_clash(const struct sim_file *f, const struct sim_prof *p,
		      uint16_t match, uint16_t ignore)
{
	if (!profiles_overlap(p->match, p->ignore, match, ignore))
		return 0;
	return (f->flags & SIM_STRICT_VNI_OVERLAP) || p->ignore || ignore;
}

static int prof_conflict(struct sim_file *f, uint16_t match, uint16_t ignore)
{
	struct sim_state *st = &f->st;

	for (uint32_t i = 0; i < st->prof_hw; i++) {
		struct sim_prof *p = &st->prof[i];
		if (p->used && prof_clash(f, p, match, ignore))
			return 1;
	}
	return 0;
}

/* Create a TX/RX profile pair (disabled), -EEXIST on overlap. */
static int prof_create(struct sim_file *f, uint16_t match, uint16_t ignore,
		       uint32_t owner)
{
	struct sim_state *st = &f->st;
	uint32_t i;

	if (prof_conflict(f, match, ignore))
		return -EEXIST;
	for (i = 0; i < MAX_PROF; i++)
		if (!st->prof[i].used)
			break;
	if (i == MAX_PROF)
		return -ENOSPC;
	if (i >= st->prof_hw) {
		J(f, &st->prof_hw);
		st->prof_hw = i + 1;
	}
	struct sim_prof *p = &st->prof[i];
	J(f, p);
	memset(p, 0, sizeof(*p));
	p->used = 1;
	p->match = match;
	p->ignore = ignore;
	p->owner = owner;
	return (int)i;
}

static int prof_enable(struct sim_file *f, struct sim_prof *p)
{
	if (p->enabled)
		return 0;
	if (f->st.rmu_used >= RMU_ENTRIES)
		return -ENOSPC;
	J(f, &f->st.rmu_used);
	f->st.rmu_used++;
	J(f, p);
	p->enabled = 1;
	return 0;
}

static void prof_disable(struct sim_file *f, struct sim_prof *p)
{
	if (!p->enabled)
		return;
	J(f, &f->st.rmu_used);
	f->st.rmu_used--;
	J(f, p);
	p->enabled = 0;
}

static void prof_free(struct sim_file *f, int idx)
{
	struct sim_prof *p = &f->st.prof[idx];

	prof_disable(f, p);
	J(f, p);
	memset(p, 0, sizeof(*p));
}

static uint8_t tc_mask_of(const struct cxi_svc_desc *d)
{
	if (!d->restricted_tcs)
		return (1u << CXI_TC_MAX) - 1;
	uint8_t m = 0;
	for (int t = 0; t < CXI_TC_MAX; t++)
		if (d->tcs[t])
			m |= 1u << t;
	return m;
}

/* Profile ACs mirror the members; NET_NS members carry their value (d.4). */
static int svc_add_profile(struct sim_file *f, struct sim_svc *s, int slot,
			   uint16_t match, uint16_t ignore, int with_netns_members)
{
	int idx = prof_create(f, match, ignore, s->desc.svc_id);
	if (idx < 0)
		return idx;
	struct sim_prof *p = &f->st.prof[idx];
	int rc = ac_from_members(&p->ac, &s->desc);
	if (rc)
		return rc;
	if (!with_netns_members)
		p->ac.nnetns = 0;
	p->tc_mask = tc_mask_of(&s->desc);
	J(f, &s->prof[slot]);
	s->prof[slot] = idx;
	return 0;
}

/* Resource reservation (reserve_rsrcs), with fail_info as the driver fills it. */
static int svc_reserve(struct sim_file *f, struct sim_svc *s,
		       struct cxi_svc_fail_info *fi)
{
	struct sim_state *st = &f->st;
	struct cxi_rsrc_limits *lim = &s->desc.limits;
	static const int order[] = { CXI_RSRC_TYPE_PTE, CXI_RSRC_TYPE_TXQ,
		CXI_RSRC_TYPE_TGQ, CXI_RSRC_TYPE_EQ, CXI_RSRC_TYPE_CT,
		CXI_RSRC_TYPE_LE, CXI_RSRC_TYPE_AC };
	static const int rorder[] = { CXI_RSRC_TYPE_PTE, CXI_RSRC_TYPE_TXQ,
		CXI_RSRC_TYPE_TGQ, CXI_RSRC_TYPE_EQ, CXI_RSRC_TYPE_CT,
		CXI_RSRC_TYPE_LE, CXI_RSRC_TYPE_TLE, CXI_RSRC_TYPE_AC };

	if (!s->desc.resource_limits) {
		for (int t = 0; t < CXI_RSRC_TYPE_MAX; t++) {
			lim->type[t].max = dev_totals[t];
			lim->type[t].res = 0;
		}
	}
	if (s->desc.svc_id != CXI_DEFAULT_SVC_ID &&
	    (lim->tles.max || lim->tles.res)) {
		if (lim->tles.res < MIN_POOL_TLES)
			lim->tles.res = MIN_POOL_TLES;
		lim->tles.max = lim->tles.res;
	}
	for (unsigned k = 0; k < sizeof(order) / sizeof(order[0]); k++) {
		int t = order[k];
		if (!lim->type[t].max && !lim->type[t].res)
			continue;
		uint16_t shared = dev_totals[t] - st->reserved[t];
		fi->rsrc_avail[t] = shared;
		if (lim->type[t].res > shared)
			return -ENOSPC;
	}
	J(f, &st->reserved);
	J(f, &st->tle_pools);
	J(f, &st->le_pools);
	for (unsigned k = 0; k < sizeof(rorder) / sizeof(rorder[0]); k++) {
		int t = rorder[k];
		if (!lim->type[t].max && !lim->type[t].res)
			continue;
		if (t == CXI_RSRC_TYPE_TLE &&
		    lim->tles.res > dev_totals[t] - st->reserved[t])
			return -ENOSPC;
		st->reserved[t] += lim->type[t].res;
		if (t == CXI_RSRC_TYPE_LE) {
			int p;
			for (p = 0; p < NUM_LE_POOLS; p++)
				if (!(st->le_pools & (1u << p)))
					break;
			if (p == NUM_LE_POOLS) {
				fi->no_le_pools = 1;
				return -ENOSPC;
			}
			st->le_pools |= 1u << p;
			s->le_pool = p;
		} else if (t == CXI_RSRC_TYPE_TLE) {
			int p;
			for (p = 0; p < NUM_TLE_POOLS; p++)
				if (!(st->tle_pools & (1u << p)))
					break;
			if (p == NUM_TLE_POOLS) {
				fi->no_tle_pools = 1;
				return -ENOSPC;
			}
			st->tle_pools |= 1u << p;
			s->tle_pool = p;
		}
	}
	return 0;
}

static void svc_unreserve(struct sim_file *f, struct sim_svc *s)
{
	struct sim_state *st = &f->st;

	J(f, &st->reserved);
	J(f, &st->tle_pools);
	J(f, &st->le_pools);
	for (int t = 0; t < CXI_RSRC_TYPE_MAX; t++)
		st->reserved[t] -= s->desc.limits.type[t].res;
	if (s->le_pool >= 0)
		st->le_pools &= ~(1u << s->le_pool);
	if (s->tle_pool >= 0)
		st->tle_pools &= ~(1u << s->tle_pool);
}

/* Enable/disable the rgroup and profiles (cxi_svc_enable); caller journals s. */
static int svc_set_enabled(struct sim_file *f, struct sim_svc *s, int enable)
{
	if (!enable) {
		s->enabled = 0;
		s->desc.enable = 0;
		for (int i = 0; i < CXI_SVC_MAX_VNIS; i++)
			if (s->prof[i] >= 0)
				prof_disable(f, &f->st.prof[s->prof[i]]);
		return 0;
	}
	s->enabled = 1;
	s->desc.enable = 1;
	for (int i = 0; i < s->desc.num_vld_vnis && i < CXI_SVC_MAX_VNIS; i++) {
		int rc;
		if (s->prof[i] < 0)
			rc = -EINVAL;
		else
			rc = prof_enable(f, &f->st.prof[s->prof[i]]);
		if (rc) {
			svc_set_enabled(f, s, 0);
			return rc;
		}
	}
	return 0;
}

static int validate_desc(const struct cxi_svc_desc *d)
{
	if (d->restricted_vnis) {
		if (d->num_vld_vnis > CXI_SVC_MAX_VNIS)
			return -EINVAL;
		for (int i = 0; i < d->num_vld_vnis; i++)
			if (d->vnis[i] == 0)
				return -EINVAL;
	}
	if (d->restricted_members) {
		for (int i = 0; i < CXI_SVC_MAX_MEMBERS; i++)
			if ((unsigned)d->members[i].type >= CXI_SVC_MEMBER_MAX)
				return -EINVAL;
	}
	if (d->resource_limits) {
		for (int t = 0; t < CXI_RSRC_TYPE_MAX; t++)
			if (d->limits.type[t].max < d->limits.type[t].res ||
			    d->limits.type[t].max > dev_totals[t])
				return -EINVAL;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* LNI reaping: the kernel frees an LNI when its fd closes. */

static void child_free(struct sim_file *f, int idx)
{
	struct sim_child *c = &f->st.child[idx];

	if (c->prof >= 0) {
		struct sim_prof *p = &f->st.prof[c->prof];
		J(f, p);
		p->refs--;
		if (!p->refs && p->owner == 0)
			prof_free(f, c->prof);
	}
	J(f, c);
	memset(c, 0, sizeof(*c));
}

static void objs_release(struct sim_file *f, int lni_idx);

static void lni_free(struct sim_file *f, int idx)
{
	struct sim_state *st = &f->st;
	struct sim_lni *l = &st->lni[idx];
	struct sim_svc *s = svc_get(st, l->svc_id);

	objs_release(f, idx);

	for (uint32_t i = 0; i < st->child_hw && l->nchild; i++) {
		if (st->child[i].used && st->child[i].lni == idx) {
			child_free(f, i);
			J(f, l);
			l->nchild--;
		}
	}
	if (s) {
		J(f, s);
		s->nlni--;
		/* ceil(nlni / lpr) RGIDs; lpr 0 behaves as 1 */
		uint32_t lpr = s->lpr ? s->lpr : 1;
		uint32_t need = (s->nlni + lpr - 1) / lpr;
		if (need < s->nrgid) {
			J(f, &st->rgids_used);
			st->rgids_used -= s->nrgid - need;
			s->nrgid = need;
		}
	}
	J(f, l);
	memset(l, 0, sizeof(*l));
}

/* Release LNIs of dead processes (of one service, or all with svc_id 0).
 * Each release is committed on its own: it is not part of the caller's op. */
static void reap_dead(struct simdev *sd, unsigned int svc_id)
{
	struct sim_file *f = sd->f;
	struct sim_state *st = &f->st;

	if (f->j.used)
		return;	/* only at the start of an operation */
	for (uint32_t i = 0; i < st->lni_hw; i++) {
		struct sim_lni *l = &st->lni[i];
		if (!l->used || (svc_id && l->svc_id != svc_id))
			continue;
		if (owner_alive(sd, l))
			continue;
		lni_free(f, i);
		J(f, &st->reaped_lnis);
		st->reaped_lnis++;
		jcommit(f);
	}
}

/* ------------------------------------------------------------------ */
/* State files */

static const char *root_dir(void)
{
	const char *r = getenv("PYCXI_SIM_ROOT");
	return (r && *r) ? r : PYCXI_SIM_DEFAULT_ROOT;
}

const char *pycxi_sim_root(void)
{
	return root_dir();
}

static void dev_path(char *buf, size_t len, unsigned int dev_id)
{
	snprintf(buf, len, "%s/cxi%u", root_dir(), dev_id);
}

static int mkdir_p(const char *path)
{
	char tmp[PATH_MAX];
	size_t n = strlen(path);

	if (n >= sizeof(tmp))
		return -ENAMETOOLONG;
	memcpy(tmp, path, n + 1);
	for (char *p = tmp + 1; *p; p++) {
		if (*p == '/') {
			*p = 0;
			if (mkdir(tmp, 0755) && errno != EEXIST)
				return -errno;
			*p = '/';
		}
	}
	if (mkdir(tmp, 0755) && errno != EEXIST)
		return -errno;
	return 0;
}

/* The default service, created through the normal path at "probe". */
static void init_default_svc(struct sim_file *f)
{
	struct sim_state *st = &f->st;
	struct sim_svc *s = &st->svc[0];
	struct cxi_svc_fail_info fi;

	memset(&fi, 0, sizeof(fi));
	st->svc_hw = 1;
	s->used = 1;
	s->tle_pool = -1;
	s->le_pool = -1;
	s->lpr = 1;
	s->seq = ++st->seq;
	for (int i = 0; i < CXI_SVC_MAX_VNIS; i++)
		s->prof[i] = -1;
	s->desc.svc_id = CXI_DEFAULT_SVC_ID;
	s->desc.resource_limits = 1;
	s->desc.restricted_vnis = 1;
	s->desc.num_vld_vnis = 2;
	s->desc.vnis[0] = 1;
	s->desc.vnis[1] = 10;
	for (int t = 0; t < CXI_TC_ETH; t++)
		s->desc.tcs[t] = 1;
	for (int t = 0; t < CXI_RSRC_TYPE_MAX; t++)
		s->desc.limits.type[t].max = dev_totals[t];
	s->desc.limits.tles.max = DEFAULT_SVC_TLES;
	s->desc.limits.tles.res = DEFAULT_SVC_TLES;
	s->ac.open = 1;
	for (int i = 0; i < 2; i++)
		svc_add_profile(f, s, i, s->desc.vnis[i], 0, 0);
	svc_reserve(f, s, &fi);
	/* disable_default_svc=1 (the module default): it stays disabled. */
	jcommit(f);
}

static int create_device_file(unsigned int dev_id)
{
	char path[PATH_MAX], tmp[PATH_MAX + 64];
	int rc = mkdir_p(root_dir());

	if (rc)
		return rc;
	/* owner tokens of any user's LNIs (see handle_token): sticky, like /tmp */
	snprintf(path, sizeof(path), "%s/.owners", root_dir());
	if (mkdir(path, 01777) && errno != EEXIST)
		return -errno;
	chmod(path, 01777);
	dev_path(path, sizeof(path), dev_id);
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d.%lx", path, (int)getpid(),
		 (unsigned long)pthread_self());
	int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
	if (fd < 0)
		return -errno;
	fchmod(fd, 0666);	/* like /dev/cxiN: any user may open it */
	if (ftruncate(fd, sizeof(struct sim_file))) {
		rc = -errno;
		goto out;
	}
	struct sim_file *f = mmap(NULL, sizeof(*f), PROT_READ | PROT_WRITE,
				  MAP_SHARED, fd, 0);
	if (f == MAP_FAILED) {
		rc = -errno;
		goto out;
	}
	pthread_mutexattr_t a;
	pthread_mutexattr_init(&a);
	pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
	pthread_mutex_init(&f->lock, &a);
	pthread_mutexattr_destroy(&a);
	f->version = SIM_VERSION;
	f->dev_id = dev_id;
	const char *strict = getenv("PYCXI_SIM_STRICT_VNI_OVERLAP");
	if (strict && *strict && strcmp(strict, "0"))
		f->flags |= SIM_STRICT_VNI_OVERLAP;
	const char *stock = getenv("PYCXI_SIM_STOCK_ROOT_PROFILE");
	if (stock && *stock && strcmp(stock, "0"))
		f->flags |= SIM_STOCK_ROOT_PROFILE;
	init_default_svc(f);
	__atomic_store_n(&f->magic, SIM_MAGIC, __ATOMIC_RELEASE);
	munmap(f, sizeof(*f));
	/* Publish atomically; a concurrent creator may have won. */
	if (link(tmp, path) && errno != EEXIST)
		rc = -errno;
out:
	close(fd);
	unlink(tmp);
	return rc;
}

static int count_devices(void)
{
	DIR *d = opendir(root_dir());
	int n = 0;

	if (!d)
		return 0;
	for (struct dirent *e; (e = readdir(d));) {
		unsigned id;
		char extra;
		if (sscanf(e->d_name, "cxi%u%c", &id, &extra) == 1 &&
		    id < PYCXI_SIM_MAX_DEVICES)
			n++;
	}
	closedir(d);
	return n;
}

/* Map device dev_id (cached per process; re-mapped after a reset). */
static int sim_map(unsigned int dev_id, struct simdev **out)
{
	char path[PATH_MAX];
	struct stat sb;
	int rc = 0;

	if (dev_id >= PYCXI_SIM_MAX_DEVICES)
		return -ENOENT;
	dev_path(path, sizeof(path), dev_id);
	if (stat(path, &sb)) {
		/* A machine with no device yet gets cxi0, like a loaded driver. */
		if (errno != ENOENT || dev_id != 0 || count_devices() != 0)
			return -ENOENT;
		rc = create_device_file(0);
		if (rc)
			return rc == -EACCES ? -ENOENT : rc;
		if (stat(path, &sb))
			return -errno;
	}
	pthread_mutex_lock(&proc_lock);
	struct simdev *sd = mapped[dev_id];
	if (sd && sd->ino == sb.st_ino && sd->fsdev == sb.st_dev)
		goto done;
	/* Stale mappings are leaked deliberately: old handles may still use them. */
	sd = calloc(1, sizeof(*sd));
	if (!sd) {
		rc = -ENOMEM;
		goto done;
	}
	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		free(sd);
		sd = NULL;
		goto done;
	}
	sd->f = mmap(NULL, sizeof(struct sim_file), PROT_READ | PROT_WRITE,
		     MAP_SHARED, fd, 0);
	close(fd);
	if (sd->f == MAP_FAILED || sd->f->magic != SIM_MAGIC ||
	    sd->f->version != SIM_VERSION) {
		if (sd->f != MAP_FAILED)
			munmap(sd->f, sizeof(struct sim_file));
		free(sd);
		sd = NULL;
		rc = -EIO;
		goto done;
	}
	sd->ino = sb.st_ino;
	sd->fsdev = sb.st_dev;
	sd->dev_id = dev_id;
	snprintf(sd->owners, sizeof(sd->owners), "%s/.owners", root_dir());
	mapped[dev_id] = sd;
done:
	pthread_mutex_unlock(&proc_lock);
	*out = sd;
	return rc;
}

int pycxi_sim_reset(unsigned int ndev)
{
	char path[PATH_MAX];

	if (ndev > PYCXI_SIM_MAX_DEVICES)
		return -EINVAL;
	for (unsigned i = 0; i < PYCXI_SIM_MAX_DEVICES; i++) {
		dev_path(path, sizeof(path), i);
		if (unlink(path) && errno != ENOENT)
			return -errno;
	}
	for (unsigned i = 0; i < ndev; i++) {
		int rc = create_device_file(i);
		if (rc)
			return rc;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Device handles */

static void fill_devinfo(struct cxil_devinfo *info, unsigned int dev_id)
{
	memset(info, 0, sizeof(*info));
	info->dev_id = dev_id;
	info->nid = 0x100 + dev_id;
	info->pid_bits = PID_BITS;
	info->pid_count = PID_COUNT;
	info->pid_granule = 256;
	snprintf(info->device_name, sizeof(info->device_name), "cxi%u", dev_id);
	snprintf(info->driver_name, sizeof(info->driver_name), "pycxisim");
	info->vendor_id = 0x17db;	/* Cray */
	info->device_id = 0x0501;	/* Cassini 1 */
	info->num_ptes = dev_totals[CXI_RSRC_TYPE_PTE];
	info->num_txqs = dev_totals[CXI_RSRC_TYPE_TXQ];
	info->num_tgqs = dev_totals[CXI_RSRC_TYPE_TGQ];
	info->num_eqs = dev_totals[CXI_RSRC_TYPE_EQ];
	info->num_cts = dev_totals[CXI_RSRC_TYPE_CT];
	info->num_acs = dev_totals[CXI_RSRC_TYPE_AC];
	info->num_tles = dev_totals[CXI_RSRC_TYPE_TLE];
	info->num_les = dev_totals[CXI_RSRC_TYPE_LE];
	info->link_mtu = 2112;
	info->link_speed = 200000;
	info->link_state = 1;
	snprintf(info->fru_description, sizeof(info->fru_description), "pycxi-sim");
}

int cxil_open_device(uint32_t dev_id, struct cxil_dev **dev)
{
	struct simdev *sd;
	int rc;

	if (!dev)
		return -EINVAL;
	rc = sim_map(dev_id, &sd);
	if (rc)
		return rc;
	struct sim_dev_handle *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->sd = sd;
	h->tok_fd = -1;
	fill_devinfo(&h->pub.info, dev_id);
	*dev = &h->pub;
	return 0;
}

static int lni_destroy_locked(struct sim_file *f, struct sim_lni_handle *lh);

void cxil_close_device(struct cxil_dev *dev)
{
	if (!dev)
		return;
	struct sim_dev_handle *h = (struct sim_dev_handle *)dev;
	struct sim_lni_handle *lh = h->lnis, *next;

	/* Closing the fd releases the LNIs allocated through it. */
	if (lh && sim_lock(h->sd->f) == 0) {
		for (; lh; lh = lh->next)
			lni_destroy_locked(h->sd->f, lh);
		sim_unlock(h->sd->f, 0);
	}
	for (lh = h->lnis; lh; lh = next) {
		next = lh->next;
		lh->dev = NULL;	/* children may still point here: see destroy */
	}
	handle_token_release(h);
	free(h);
}

int cxil_get_device_list(struct cxil_device_list **dev_list)
{
	unsigned int ids[PYCXI_SIM_MAX_DEVICES], n = 0;

	if (!dev_list)
		return -EINVAL;
	for (unsigned i = 0; i < PYCXI_SIM_MAX_DEVICES; i++) {
		struct simdev *sd;
		if (sim_map(i, &sd) == 0)
			ids[n++] = i;
	}
	struct cxil_device_list *l = calloc(1, sizeof(*l) +
					    n * sizeof(struct cxil_devinfo));
	if (!l)
		return -ENOMEM;
	l->count = n;
	for (unsigned i = 0; i < n; i++)
		fill_devinfo(&l->info[i], ids[i]);
	*dev_list = l;
	return 0;
}

void cxil_free_device_list(struct cxil_device_list *dev_list)
{
	free(dev_list);
}

/* ------------------------------------------------------------------ */
/* Service API */

#define DEV_SD(dev) (((struct sim_dev_handle *)(dev))->sd)
#define DEV_FILE(dev) (DEV_SD(dev)->f)

/* Common prologue of admin ops: dispatch() checks CAP_SYS_ADMIN. */
static int admin_begin(struct cxil_dev *dev, struct sim_file **fp)
{
	if (!dev)
		return -EINVAL;
	if (!has_cap(CAP_BIT_SYS_ADMIN))
		return -EPERM;
	*fp = DEV_FILE(dev);
	return sim_lock(*fp);
}

static int user_begin(struct cxil_dev *dev, struct sim_file **fp)
{
	if (!dev)
		return -EINVAL;
	*fp = DEV_FILE(dev);
	return sim_lock(*fp);
}

int cxil_alloc_svc(struct cxil_dev *dev, const struct cxi_svc_desc *desc,
		   struct cxi_svc_fail_info *fail_info)
{
	struct sim_file *f;
	struct cxi_svc_fail_info fi;
	int rc;

	if (!desc)
		return -EINVAL;
	rc = admin_begin(dev, &f);
	if (rc)
		return rc;
	memset(&fi, 0, sizeof(fi));
	struct sim_state *st = &f->st;

	rc = validate_desc(desc);
	if (rc)
		goto out;

	unsigned int id;
	for (id = 1; id <= MAX_SVC; id++)
		if (!st->svc[id - 1].used)
			break;
	if (id > MAX_SVC) {
		rc = -ENOSPC;
		goto out;
	}
	if (id > st->svc_hw) {
		J(f, &st->svc_hw);
		st->svc_hw = id;
	}
	struct sim_svc *s = &st->svc[id - 1];
	J(f, s);
	memset(s, 0, sizeof(*s));
	s->used = 1;
	s->tle_pool = -1;
	s->le_pool = -1;
	s->lpr = 1;
	for (int i = 0; i < CXI_SVC_MAX_VNIS; i++)
		s->prof[i] = -1;
	s->desc = *desc;
	s->desc.svc_id = id;
	s->desc.enable = 0;
	J(f, &st->seq);
	s->seq = ++st->seq;

	rc = ac_from_members(&s->ac, &s->desc);
	if (rc)
		goto out;
	if (s->desc.restricted_vnis) {
		for (int i = 0; i < s->desc.num_vld_vnis; i++) {
			rc = svc_add_profile(f, s, i, s->desc.vnis[i], 0, 1);
			if (rc)
				goto out;
		}
	}
	rc = svc_reserve(f, s, &fi);
	if (rc)
		goto out;
	if (s->desc.restricted_vnis) {
		rc = svc_set_enabled(f, s, 1);
		if (rc)
			goto out;
	}
	rc = (int)id;
out:
	if (rc < 0 && fail_info)
		*fail_info = fi;
	return sim_unlock(f, rc);
}

/* Busy check with dead LNIs released first (the kernel's refcount > 1). */
static int svc_busy(struct cxil_dev *dev, struct sim_svc *s)
{
	if (s->nlni)
		reap_dead(DEV_SD(dev), s->desc.svc_id);
	return s->nlni ? -EBUSY : 0;
}

int cxil_destroy_svc(struct cxil_dev *dev, unsigned int svc_id)
{
	struct sim_file *f;
	int rc;

	if (svc_id < 1)
		return -EINVAL;
	rc = admin_begin(dev, &f);
	if (rc)
		return rc;
	struct sim_state *st = &f->st;
	struct sim_svc *s = svc_get(st, svc_id);
	if (svc_id == CXI_DEFAULT_SVC_ID || !s) {
		rc = -EINVAL;
		goto out;
	}
	rc = svc_busy(dev, s);
	if (rc)
		goto out;
	J(f, s);
	svc_set_enabled(f, s, 0);
	svc_unreserve(f, s);
	for (int i = 0; i < CXI_SVC_MAX_VNIS; i++) {
		int idx = s->prof[i];
		if (idx < 0)
			continue;
		struct sim_prof *p = &st->prof[idx];
		if (p->refs) {
			/* Held by a CP/domain of another service's LNI: it
			 * survives, enabled, without ACs. */
			J(f, p);
			memset(&p->ac, 0, sizeof(p->ac));
			p->owner = 0;
			prof_enable(f, p);
		} else {
			prof_free(f, idx);
		}
	}
	memset(s, 0, sizeof(*s));
out:
	return sim_unlock(f, rc);
}

int cxil_update_svc(struct cxil_dev *dev, const struct cxi_svc_desc *desc,
		    struct cxi_svc_fail_info *fail_info)
{
	struct sim_file *f;
	int rc;

	if (!desc)
		return -EINVAL;
	rc = admin_begin(dev, &f);
	if (rc)
		return rc;
	struct sim_svc *s;
	rc = validate_desc(desc);
	if (rc)
		goto out;
	s = svc_get(&f->st, desc->svc_id);
	if (!s) {
		rc = -EINVAL;
		goto out;
	}
	rc = svc_busy(dev, s);
	if (rc)
		goto out;
	if (desc->resource_limits != s->desc.resource_limits) {
		rc = -EINVAL;
		goto out;
	}
	J(f, s);
	rc = svc_set_enabled(f, s, desc->enable);
	if (rc) {
		/* The driver leaves the service disabled: keep that. */
		jcommit(f);
		goto out;
	}
	/* Only the stored descriptor changes: no ACs, profiles or TCs. */
	s->desc.restricted_members = desc->restricted_members;
	s->desc.restricted_vnis = desc->restricted_vnis;
	s->desc.num_vld_vnis = desc->num_vld_vnis;
	s->desc.restricted_tcs = desc->restricted_tcs;
	s->desc.cntr_pool_id = desc->cntr_pool_id;
	s->desc.enable = desc->enable;
	memcpy(s->desc.tcs, desc->tcs, sizeof(desc->tcs));
	memcpy(s->desc.vnis, desc->vnis, sizeof(desc->vnis));
	memcpy(s->desc.members, desc->members, sizeof(desc->members));
out:
	if (rc < 0 && fail_info)
		memset(fail_info, 0, sizeof(*fail_info));
	return sim_unlock(f, rc);
}

int cxil_get_svc(struct cxil_dev *dev, unsigned int svc_id,
		 struct cxi_svc_desc *svc_desc)
{
	struct sim_file *f;
	int rc;

	if (!svc_desc)
		return -EINVAL;
	rc = user_begin(dev, &f);
	if (rc)
		return rc;
	struct sim_svc *s = svc_get(&f->st, svc_id);
	if (!s)
		rc = -EINVAL;
	else
		*svc_desc = s->desc;
	return sim_unlock(f, rc);
}

/* Services in creation order (13.1). */
static unsigned int svc_order(struct sim_state *st, unsigned int *ids)
{
	unsigned int n = 0;

	for (uint32_t i = 0; i < st->svc_hw; i++)
		if (st->svc[i].used)
			ids[n++] = i + 1;
	/* insertion sort by seq: lists are short and mostly ordered */
	for (unsigned int i = 1; i < n; i++) {
		unsigned int v = ids[i], k = i;
		while (k && st->svc[ids[k - 1] - 1].seq > st->svc[v - 1].seq) {
			ids[k] = ids[k - 1];
			k--;
		}
		ids[k] = v;
	}
	return n;
}

int cxil_get_svc_list(struct cxil_dev *dev, struct cxil_svc_list **svc_list)
{
	struct sim_file *f;
	static __thread unsigned int ids[MAX_SVC];
	int rc;

	if (!svc_list)
		return -EINVAL;
	rc = user_begin(dev, &f);
	if (rc)
		return rc;
	unsigned int n = svc_order(&f->st, ids);
	struct cxil_svc_list *l = malloc(sizeof(*l) + n * sizeof(struct cxi_svc_desc));
	if (!l) {
		rc = -ENOMEM;
	} else {
		l->count = n;
		for (unsigned int i = 0; i < n; i++)
			l->descs[i] = f->st.svc[ids[i] - 1].desc;
		*svc_list = l;
	}
	return sim_unlock(f, rc);
}

void cxil_free_svc_list(struct cxil_svc_list *svc_list)
{
	free(svc_list);
}

static void fill_rsrc_use(const struct sim_state *st, struct sim_svc *s,
			  struct cxi_rsrc_use *u)
{
	memset(u, 0, sizeof(*u));
	u->svc_id = s->desc.svc_id;
	u->tle_pool_id = s->tle_pool >= 0 ? (unsigned)s->tle_pool : 0;
	/* PTE, TXQ, TGQ, EQ, CT, AC: the objects charged to it.  LE stays 0
	 * (13.1 reports PE0's software count) and so does TLE (read from the
	 * hardware, which holds no triggered operations here). */
	memcpy(u->in_use, st->rsrc.in_use[s->desc.svc_id - 1], sizeof(u->in_use));
}

int cxil_get_svc_rsrc_use(struct cxil_dev *dev, unsigned int svc_id,
			  struct cxi_rsrc_use *rsrcs)
{
	struct sim_file *f;
	int rc;

	if (!rsrcs)
		return -EINVAL;
	rc = user_begin(dev, &f);
	if (rc)
		return rc;
	struct sim_svc *s = svc_get(&f->st, svc_id);
	if (!s) {
		rc = -EINVAL;
	} else {
		if (s->nlni)	/* a dead process's objects went with its fd */
			reap_dead(DEV_SD(dev), svc_id);
		fill_rsrc_use(&f->st, s, rsrcs);
	}
	return sim_unlock(f, rc);
}

int cxil_get_svc_rsrc_list(struct cxil_dev *dev,
			   struct cxil_svc_rsrc_list **rsrc_list)
{
	struct sim_file *f;
	static __thread unsigned int ids[MAX_SVC];
	int rc;

	if (!rsrc_list)
		return -EINVAL;
	rc = user_begin(dev, &f);
	if (rc)
		return rc;
	reap_dead(DEV_SD(dev), 0);
	unsigned int n = svc_order(&f->st, ids);
	struct cxil_svc_rsrc_list *l = malloc(sizeof(*l) + n * sizeof(struct cxi_rsrc_use));
	if (!l) {
		rc = -ENOMEM;
	} else {
		l->count = n;
		for (unsigned int i = 0; i < n; i++)
			fill_rsrc_use(&f->st, &f->st.svc[ids[i] - 1], &l->rsrcs[i]);
		*rsrc_list = l;
	}
	return sim_unlock(f, rc);
}

void cxil_free_svc_rsrc_list(struct cxil_svc_rsrc_list *rsrc_list)
{
	free(rsrc_list);
}

int cxil_svc_enable(struct cxil_dev *dev, unsigned int svc_id, bool enable)
{
	struct sim_file *f;
	int rc;

	if (!dev || svc_id < 1)
		return -EINVAL;
	rc = admin_begin(dev, &f);
	if (rc)
		return rc;
	struct sim_svc *s = svc_get(&f->st, svc_id);
	if (!s) {
		rc = -EINVAL;
		goto out;
	}
	rc = svc_busy(dev, s);
	if (rc)
		goto out;
	J(f, s);
	rc = svc_set_enabled(f, s, enable);
	if (rc)
		jcommit(f);	/* the failed enable leaves it disabled */
out:
	return sim_unlock(f, rc);
}

int cxil_set_svc_lpr(struct cxil_dev *dev, unsigned int svc_id,
		     unsigned int lnis_per_rgid)
{
	struct sim_file *f;
	int rc;

	rc = admin_begin(dev, &f);
	if (rc)
		return rc;
	struct sim_svc *s;
	if (lnis_per_rgid > MAX_LPR) {
		rc = -EINVAL;
		goto out;
	}
	/* enable_rgid_sharing defaults to true: nothing to skip. */
	s = svc_get(&f->st, svc_id);
	if (!s) {
		rc = -EINVAL;
		goto out;
	}
	rc = svc_busy(dev, s);
	if (rc)
		goto out;
	J(f, s);
	s->lpr = lnis_per_rgid;
out:
	return sim_unlock(f, rc);
}

int cxil_get_svc_lpr(struct cxil_dev *dev, unsigned int svc_id)
{
	struct sim_file *f;
	int rc = user_begin(dev, &f);

	if (rc)
		return rc;
	struct sim_svc *s = svc_get(&f->st, svc_id);
	rc = s ? (int)s->lpr : -EINVAL;
	return sim_unlock(f, rc);
}

int cxil_svc_set_exclusive_cp(struct cxil_dev *dev, unsigned int svc_id,
			      bool exclusive_cp)
{
	struct sim_file *f;
	int rc;

	if (!dev || svc_id < 1)
		return -EINVAL;
	rc = admin_begin(dev, &f);
	if (rc)
		return rc;
	struct sim_svc *s = svc_get(&f->st, svc_id);
	if (!s || s->desc.restricted_vnis || s->prof[0] < 0) {
		rc = -EINVAL;
		goto out;
	}
	struct sim_prof *p = &f->st.prof[s->prof[0]];
	if (p->enabled) {
		rc = -EBUSY;
		goto out;
	}
	J(f, p);
	p->exclusive_cp = exclusive_cp;
out:
	return sim_unlock(f, rc);
}

int cxil_svc_get_exclusive_cp(struct cxil_dev *dev, unsigned int svc_id,
			      bool *exclusive_cp)
{
	struct sim_file *f;
	int rc = user_begin(dev, &f);

	if (rc)
		return rc;
	struct sim_svc *s = svc_get(&f->st, svc_id);
	if (!s)
		rc = -EINVAL;
	else if (s->prof[0] < 0)
		rc = -ENOENT;
	else if (exclusive_cp)
		*exclusive_cp = f->st.prof[s->prof[0]].exclusive_cp;
	return sim_unlock(f, rc);
}

static int vni_valid(unsigned int vni)
{
	return vni != 0 && vni <= 0xFFFF;
}

int cxil_svc_set_vni_range(struct cxil_dev *dev, unsigned int svc_id,
			   uint16_t vni_min, uint16_t vni_max)
{
	struct sim_file *f;
	int rc;

	if (!dev || svc_id < 1)
		return -EINVAL;
	rc = admin_begin(dev, &f);
	if (rc)
		return rc;
	struct sim_svc *s = svc_get(&f->st, svc_id);
	unsigned int size = (unsigned)vni_max - vni_min + 1;
	if (!s || s->desc.restricted_vnis || !vni_valid(vni_min) ||
	    !vni_valid(vni_max) || vni_max < vni_min ||
	    (size & (size - 1)) || (vni_min % size)) {
		rc = -EINVAL;
		goto out;
	}
	if (s->prof[0] >= 0) {
		/* A second range overlaps the service's own profile. */
		rc = -EEXIST;
		goto out;
	}
	J(f, s);
	/* Range profiles get the member ACs (NET_NS members included, d.4) but
	 * not the entries set_netns added (c.4). */
	rc = svc_add_profile(f, s, 0, vni_min, (uint16_t)(size - 1), 1);
	if (rc)
		goto out;
	s->desc.num_vld_vnis = 1;
out:
	return sim_unlock(f, rc);
}

int cxil_svc_get_vni_range(struct cxil_dev *dev, unsigned int svc_id,
			   uint16_t *vni_min, uint16_t *vni_max)
{
	struct sim_file *f;
	int rc;

	if (!dev || !vni_min || !vni_max || svc_id < 1)
		return -EINVAL;
	rc = user_begin(dev, &f);
	if (rc)
		return rc;
	struct sim_svc *s = svc_get(&f->st, svc_id);
	if (!s || s->desc.restricted_vnis || !s->desc.num_vld_vnis) {
		rc = -EINVAL;
	} else if (s->prof[0] < 0) {
		rc = -ENOENT;
	} else {
		struct sim_prof *p = &f->st.prof[s->prof[0]];
		*vni_min = p->match;
		*vni_max = p->match + p->ignore;
	}
	return sim_unlock(f, rc);
}

int cxil_svc_set_netns(struct cxil_dev *dev, unsigned int svc_id,
		       unsigned int netns)
{
	struct sim_file *f;
	int rc;

	if (!dev || svc_id < 1)
		return -EINVAL;
	rc = admin_begin(dev, &f);
	if (rc)
		return rc;
	struct sim_svc *s = svc_get(&f->st, svc_id);
	if (!s) {
		rc = -EINVAL;
		goto out;
	}
	if (s->ac.nuid || s->ac.ngid || s->ac.open) {
		rc = -EEXIST;
		goto out;
	}
	if (s->enabled) {
		rc = -EBUSY;
		goto out;
	}
	J(f, s);
	rc = ac_insert(&s->ac, CXI_SVC_MEMBER_NET_NS, netns);
	if (rc)
		goto out;
	for (int j = 0; j < s->desc.num_vld_vnis && j < CXI_SVC_MAX_VNIS; j++) {
		if (s->prof[j] < 0) {
			/* The rgroup entry stays: the driver does not undo it. */
			jcommit(f);
			rc = -ENODATA;
			goto out;
		}
		struct sim_prof *p = &f->st.prof[s->prof[j]];
		J(f, p);
		rc = ac_insert(&p->ac, CXI_SVC_MEMBER_NET_NS, netns);
		if (rc) {
			/* All profile ACs of the service are stripped. */
			jrollback(f);
			J(f, s);
			ac_insert(&s->ac, CXI_SVC_MEMBER_NET_NS, netns);
			for (int k = 0; k < CXI_SVC_MAX_VNIS; k++) {
				if (s->prof[k] < 0)
					continue;
				struct sim_prof *q = &f->st.prof[s->prof[k]];
				J(f, q);
				memset(&q->ac, 0, sizeof(q->ac));
			}
			jcommit(f);
			goto out;
		}
	}
out:
	return sim_unlock(f, rc);
}

int cxil_svc_get_netns(struct cxil_dev *dev, unsigned int svc_id,
		       unsigned int *netns)
{
	struct sim_file *f;
	int rc;

	if (!dev || !netns || svc_id < 1)
		return -EINVAL;
	rc = user_begin(dev, &f);
	if (rc)
		return rc;
	struct sim_svc *s = svc_get(&f->st, svc_id);
	if (!s || !s->ac.nnetns) {
		rc = -EINVAL;
	} else {
		unsigned int m = s->ac.netns[0];
		for (int i = 1; i < s->ac.nnetns; i++)
			if (s->ac.netns[i] < m)
				m = s->ac.netns[i];
		*netns = m;
	}
	return sim_unlock(f, rc);
}

/* ------------------------------------------------------------------ */
/* LNIs, domains and CPs: where membership and VNIs are enforced. */

int cxil_alloc_lni(struct cxil_dev *dev, struct cxil_lni **lni,
		   unsigned int svc_id)
{
	struct sim_file *f;
	struct creds c;
	int rc;

	if (!dev || !lni || svc_id == 0)
		return -EINVAL;
	get_creds(&c);
	rc = user_begin(dev, &f);
	if (rc)
		return rc;
	struct sim_state *st = &f->st;
	struct sim_svc *s = svc_get(st, svc_id);
	if (!s) {
		rc = -EINVAL;
		goto out;
	}
	if (!s->enabled) {
		rc = -EKEYREVOKED;
		goto out;
	}
	if (!ac_grants(&s->ac, &c)) {
		rc = -EPERM;
		goto out;
	}
	uint32_t lpr = s->lpr ? s->lpr : 1;
	int new_rgid = s->nlni % lpr == 0;
	if (new_rgid && st->rgids_used >= NUM_RGIDS) {
		reap_dead(DEV_SD(dev), 0);
		if (st->rgids_used >= NUM_RGIDS) {
			rc = -ENOSPC;
			goto out;
		}
	}
	uint32_t i;
	for (i = 0; i < MAX_LNI; i++)
		if (!st->lni[i].used)
			break;
	if (i == MAX_LNI) {
		rc = -ENOSPC;
		goto out;
	}
	struct sim_dev_handle *h = (struct sim_dev_handle *)dev;
	rc = handle_token(h);
	if (rc)
		goto out;
	struct sim_lni_handle *lh = calloc(1, sizeof(*lh));
	if (!lh) {
		rc = -ENOMEM;
		goto out;
	}
	if (i >= st->lni_hw) {
		J(f, &st->lni_hw);
		st->lni_hw = i + 1;
	}
	J(f, &st->serial);
	uint64_t serial = ++st->serial;
	struct sim_lni *l = &st->lni[i];
	J(f, l);
	l->used = 1;
	l->svc_id = svc_id;
	l->nchild = 0;
	l->serial = serial;
	l->pid = getpid();
	l->owner = h->tok;
	J(f, s);
	s->nlni++;
	if (new_rgid) {
		s->nrgid++;
		J(f, &st->rgids_used);
		st->rgids_used++;
	}
	lh->pub.id = i;
	lh->dev = h;
	lh->idx = i;
	lh->serial = serial;
	lh->next = h->lnis;
	h->lnis = lh;
	*lni = &lh->pub;
	rc = 0;
out:
	return sim_unlock(f, rc);
}

/* Caller holds the lock; the handle stays allocated until cxil_destroy_lni. */
static int lni_destroy_locked(struct sim_file *f, struct sim_lni_handle *lh)
{
	struct sim_lni *l = &f->st.lni[lh->idx];

	if (!l->used || l->serial != lh->serial)
		return -EINVAL;	/* already released (reaped or closed) */
	lni_free(f, lh->idx);
	jcommit(f);
	return 0;
}

int cxil_destroy_lni(struct cxil_lni *lni)
{
	if (!lni)
		return -EINVAL;
	struct sim_lni_handle *lh = (struct sim_lni_handle *)lni;
	if (lh->nchild)
		return -EBUSY;
	struct sim_dev_handle *h = lh->dev;
	if (h) {
		struct sim_file *f = h->sd->f;
		int rc = sim_lock(f);
		if (rc)
			return rc;
		rc = lni_destroy_locked(f, lh);
		sim_unlock(f, 0);
		if (rc)
			return rc;
		for (struct sim_lni_handle **pp = &h->lnis; *pp; pp = &(*pp)->next) {
			if (*pp == lh) {
				*pp = lh->next;
				break;
			}
		}
	}
	free(lh);
	return 0;
}

/*
 * Stock drivers give any global root an implicit exact-VNI profile with a
 * UID-0 entry for a VNI no profile matches, so root in a pod could use any
 * free VNI.  Our driver patch (the device's default) does so only for callers
 * in init_net, and to others that profile grants nothing: they get the answer
 * a non-root caller gets.  PYCXI_SIM_STOCK_ROOT_PROFILE=1 at device creation
 * models the stock driver.
 */
static int root_profile_ok(const struct sim_file *f, struct creds *c)
{
	return (f->flags & SIM_STOCK_ROOT_PROFILE) || in_init_net(creds_netns(c));
}

/* find_profile + get_profile (c.3): the profile granting vni to the caller. */
static int get_profile(struct sim_file *f, unsigned int vni,
		       struct creds *c, int is_tx)
{
	struct sim_state *st = &f->st;
	int root_ok = c->euid == 0 && root_profile_ok(f, c);
	struct creds pc = *c;
	int matched = 0;

	/*
	 * As the patched driver (0005 on 13.1.0, 0002 on 14.0.0): outside the initial network
	 * namespace root is no uid 0 to the profiles -- neither to an implicit profile a host
	 * process holds nor to a uid-0 entry meant for host root.
	 */
	if (pc.euid == 0 && !root_ok)
		pc.euid = (uint32_t)-1;
	for (uint32_t i = 0; i < st->prof_hw; i++) {
		struct sim_prof *p = &st->prof[i];
		if (!p->used || !p->enabled)
			continue;
		if ((vni & (uint16_t)~p->ignore) != p->match)
			continue;
		matched = 1;
		if (ac_grants(&p->ac, &pc))
			return (int)i;
	}
	if (matched)
		return -EPERM;
	if (!root_ok)
		return -ENOENT;
	/* Root gets a private exact-VNI profile with a UID-0 entry. */
	int idx = prof_create(f, (uint16_t)vni, 0, 0);
	if (idx < 0)
		return idx;
	struct sim_prof *p = &st->prof[idx];
	ac_insert(&p->ac, CXI_SVC_MEMBER_UID, 0);
	p->tc_mask = (1u << CXI_TC_ETH) - 1;	/* TCs 0..3 */
	(void)is_tx;
	int rc = prof_enable(f, p);
	return rc ? rc : idx;
}

static int child_add(struct sim_file *f, struct sim_lni_handle *lh, int kind,
		     unsigned int vni, unsigned int pid, int prof,
		     int32_t *idx_out, uint64_t *serial_out)
{
	struct sim_state *st = &f->st;
	uint32_t i;

	for (i = 0; i < MAX_CHILD; i++)
		if (!st->child[i].used)
			break;
	if (i == MAX_CHILD)
		return -ENOSPC;
	if (i >= st->child_hw) {
		J(f, &st->child_hw);
		st->child_hw = i + 1;
	}
	J(f, &st->serial);
	struct sim_child *ch = &st->child[i];
	J(f, ch);
	ch->used = 1;
	ch->kind = kind;
	ch->vni = (uint16_t)vni;
	ch->pid = pid;
	ch->lni = lh->idx;
	ch->prof = prof;
	ch->serial = ++st->serial;
	if (prof >= 0) {
		J(f, &st->prof[prof]);
		st->prof[prof].refs++;
	}
	struct sim_lni *l = &st->lni[lh->idx];
	J(f, l);
	l->nchild++;
	*idx_out = i;
	*serial_out = ch->serial;
	return 0;
}

/* The LNI record behind a handle, or -EINVAL if it was released. */
static int lni_check(struct sim_file *f, struct sim_lni_handle *lh)
{
	struct sim_lni *l = &f->st.lni[lh->idx];
	return (l->used && l->serial == lh->serial) ? 0 : -EINVAL;
}

int cxil_alloc_domain(struct cxil_lni *lni, unsigned int vni, unsigned int pid,
		      struct cxil_domain **domain)
{
	struct sim_lni_handle *lh = (struct sim_lni_handle *)lni;
	struct creds c;
	int rc;

	if (!lni || !domain || !lh->dev)
		return -EINVAL;
	if (!vni_valid(vni))
		return -EINVAL;
	if (pid >= PID_COUNT && pid != C_PID_ANY)
		return -EINVAL;
	get_creds(&c);
	struct sim_file *f = lh->dev->sd->f;
	rc = sim_lock(f);
	if (rc)
		return rc;
	struct sim_state *st = &f->st;
	rc = lni_check(f, lh);
	if (rc)
		goto out;
	int prof = get_profile(f, vni, &c, 0);
	if (prof < 0) {
		rc = prof;
		goto out;
	}
	/* PIDs are per VNI on the device. */
	static __thread uint8_t taken[PID_COUNT];
	memset(taken, 0, sizeof(taken));
	for (uint32_t i = 0; i < st->child_hw; i++) {
		struct sim_child *ch = &st->child[i];
		if (ch->used && ch->kind == CHILD_DOMAIN && ch->vni == vni)
			taken[ch->pid] = 1;
	}
	if (pid == C_PID_ANY) {
		for (pid = 0; pid < PID_COUNT && taken[pid]; pid++)
			;
		if (pid == PID_COUNT) {
			rc = -ENOSPC;
			goto out;
		}
	} else if (taken[pid]) {
		rc = -EEXIST;
		goto out;
	}
	struct sim_domain_handle *dh = calloc(1, sizeof(*dh));
	if (!dh) {
		rc = -ENOMEM;
		goto out;
	}
	rc = child_add(f, lh, CHILD_DOMAIN, vni, pid, prof, &dh->idx, &dh->serial);
	if (rc) {
		free(dh);
		goto out;
	}
	dh->pub.vni = vni;
	dh->pub.pid = pid;
	dh->lni = lh;
	lh->nchild++;
	*domain = &dh->pub;
out:
	return sim_unlock(f, rc);
}

static int child_destroy(struct sim_lni_handle *lh, int32_t idx, uint64_t serial)
{
	if (!lh->dev) {	/* device closed: the LNI and children are gone */
		lh->nchild--;
		return 0;
	}
	struct sim_file *f = lh->dev->sd->f;
	int rc = sim_lock(f);
	if (rc)
		return rc;
	struct sim_child *ch = &f->st.child[idx];
	if (ch->used && ch->serial == serial) {
		struct sim_lni *l = &f->st.lni[ch->lni];
		child_free(f, idx);
		J(f, l);
		l->nchild--;
	}
	lh->nchild--;
	return sim_unlock(f, 0);
}

int cxil_destroy_domain(struct cxil_domain *domain)
{
	if (!domain)
		return -EINVAL;
	struct sim_domain_handle *dh = (struct sim_domain_handle *)domain;
	int rc = child_destroy(dh->lni, dh->idx, dh->serial);
	if (rc == 0)
		free(dh);
	return rc;
}

static int cp_lcid(struct sim_file *f, struct sim_lni_handle *lh, unsigned int vni,
		   unsigned int tc, unsigned int tc_type, int cp_type);

/* cxi_trig_cp_alloc: cxil_alloc_cp is the ANY_LCID case. */
int cxil_alloc_trig_cp(struct cxil_lni *lni, unsigned int vni,
		       enum cxi_traffic_class tc, enum cxi_traffic_class_type tc_type,
		       enum cxi_trig_cp cp_type, struct cxi_cp **cp)
{
	struct sim_lni_handle *lh = (struct sim_lni_handle *)lni;
	struct creds c;
	int rc, prof = -1;

	if (!lni || !cp || !lh->dev)
		return -EINVAL;
	if ((unsigned)tc >= 8 || (unsigned)tc_type >= CXI_TC_TYPE_MAX)
		return -EINVAL;
	get_creds(&c);
	struct sim_file *f = lh->dev->sd->f;
	rc = sim_lock(f);
	if (rc)
		return rc;
	rc = lni_check(f, lh);
	if (rc)
		goto out;
	if ((unsigned)tc >= CXI_TC_ETH) {
		if (vni > 7) {
			rc = -EINVAL;
			goto out;
		}
		if (!has_cap(CAP_BIT_NET_RAW)) {
			rc = -EPERM;
			goto out;
		}
	} else {
		if (!vni_valid(vni)) {
			rc = -EINVAL;
			goto out;
		}
		prof = get_profile(f, vni, &c, 1);
		if (prof < 0) {
			rc = prof;
			goto out;
		}
		if (!(f->st.prof[prof].tc_mask & (1u << tc))) {
			rc = -EINVAL;
			goto out;
		}
	}
	struct sim_cp_handle *ch = calloc(1, sizeof(*ch));
	if (!ch) {
		rc = -ENOMEM;
		goto out;
	}
	int lcid = cp_lcid(f, lh, vni, tc, tc_type, cp_type);
	if (lcid < 0) {
		free(ch);
		rc = lcid;
		goto out;
	}
	rc = child_add(f, lh, CHILD_CP, vni, 0, prof, &ch->idx, &ch->serial);
	if (rc) {
		free(ch);
		goto out;
	}
	f->st.child[ch->idx].lcid = (uint8_t)lcid;
	f->st.child[ch->idx].tc = (uint8_t)tc;
	f->st.child[ch->idx].tc_type = (uint8_t)tc_type;
	ch->pub.vni = vni;
	ch->pub.tc = tc;
	ch->pub.tc_type = tc_type;
	ch->pub.lcid = (unsigned)lcid;
	ch->lni = lh;
	lh->nchild++;
	*cp = &ch->pub;
out:
	return sim_unlock(f, rc);
}

int cxil_destroy_cp(struct cxi_cp *cp)
{
	if (!cp)
		return -EINVAL;
	struct sim_cp_handle *ch = (struct sim_cp_handle *)cp;
	int rc = child_destroy(ch->lni, ch->idx, ch->serial);
	if (rc == 0)
		free(ch);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Objects: what an application allocates on an LNI and what the service
 * is charged for.  The driver's accounting (cass_alloc_resource, 13.1 and
 * main alike): within the service's reservation an object is always
 * charged; above it, up to max, while the device's count of objects above
 * reservations (shared_use) is below the device total; then -ENOSPC.  No
 * limit entry (max = res = 0) is -EBADR, a disabled service -EKEYREVOKED.
 * Behind the charge the hardware ID allocator (ida) is the last bound.
 *
 * What a destroy gives back also follows the driver: destroyed EQs, PTEs,
 * CTs and CQs hang on the LNI's cleanup lists, still charged, until the LNI
 * goes; the LNI's next EQ or PTE reuses one of them uncharged, and a CQ
 * allocation that finds no room first finalises the LNI's parked CQs.  An
 * AC, once written, lives as long as its LNI: cxil_unmap frees only the MD.
 */

enum { OBJ_AC = 1, OBJ_MD, OBJ_EQ, OBJ_PTE, OBJ_TXQ, OBJ_TGQ, OBJ_CT };

#define NUM_LACS 8		/* C_NUM_LACS: ACs per RGID */
#define NUM_LCIDS 16		/* C_COMM_PROF_PER_CQ: CPs per RGID */
#define MIN_CQ_COUNT 64
#define PAGE_SZ 4096u
/* The map flags an AC is chosen by (ATU_FLAGS_MASK): not READ/WRITE etc. */
#define ATU_FLAGS_IGNORED (CXI_MAP_READ | CXI_MAP_WRITE | CXI_MAP_ALLOC_MD | \
			   CXI_MAP_FAULT | CXI_MAP_PREFETCH)

/* IDs the hardware tables hand out (PTE 0 is never allocated). */
static const uint16_t hw_ids[CXI_RSRC_TYPE_MAX] = {
	[CXI_RSRC_TYPE_PTE] = 2047, [CXI_RSRC_TYPE_TXQ] = 1024,
	[CXI_RSRC_TYPE_TGQ] = 512,  [CXI_RSRC_TYPE_EQ] = 2047,
	[CXI_RSRC_TYPE_CT] = 2047,  [CXI_RSRC_TYPE_LE] = 16384,
	[CXI_RSRC_TYPE_TLE] = 2048, [CXI_RSRC_TYPE_AC] = 1022,
};

static int obj_rsrc_type(int kind)
{
	switch (kind) {
	case OBJ_AC: return CXI_RSRC_TYPE_AC;
	case OBJ_EQ: return CXI_RSRC_TYPE_EQ;
	case OBJ_PTE: return CXI_RSRC_TYPE_PTE;
	case OBJ_TXQ: return CXI_RSRC_TYPE_TXQ;
	case OBJ_TGQ: return CXI_RSRC_TYPE_TGQ;
	case OBJ_CT: return CXI_RSRC_TYPE_CT;
	default: return -1;	/* MDs cost nothing but their AC */
	}
}

/* cxi_rgroup_alloc_resource + the hardware ID; caller holds the lock. */
static int rsrc_charge(struct sim_file *f, uint32_t svc_id, int t)
{
	struct sim_state *st = &f->st;
	struct sim_rsrc *r = &st->rsrc;
	struct sim_svc *s = svc_get(st, svc_id);

	if (!s)
		return -EINVAL;
	if (!s->enabled)
		return -EKEYREVOKED;
	const struct cxi_limits *lim = &s->desc.limits.type[t];
	if (!lim->max && !lim->res)
		return -EBADR;
	uint16_t *use = &r->in_use[svc_id - 1][t];
	int shared = 0;
	if (*use >= lim->res) {
		if (*use >= lim->max || r->shared_use[t] >= dev_totals[t])
			return -ENOSPC;
		shared = 1;
	}
	if (r->hw_in_use[t] >= hw_ids[t])
		return -ENOSPC;
	J(f, use);
	(*use)++;
	J(f, &r->hw_in_use[t]);
	r->hw_in_use[t]++;
	if (shared) {
		J(f, &r->shared_use[t]);
		r->shared_use[t]++;
	}
	return 0;
}

/* cass_free_resource */
static void rsrc_uncharge(struct sim_file *f, uint32_t svc_id, int t)
{
	struct sim_state *st = &f->st;
	struct sim_rsrc *r = &st->rsrc;
	struct sim_svc *s = svc_get(st, svc_id);
	uint16_t *use = &r->in_use[svc_id - 1][t];

	if (s && *use > s->desc.limits.type[t].res) {
		J(f, &r->shared_use[t]);
		r->shared_use[t]--;
	}
	J(f, use);
	(*use)--;
	J(f, &r->hw_in_use[t]);
	r->hw_in_use[t]--;
}

static int obj_add(struct sim_file *f, int32_t lni, int kind, int32_t ref,
		   uint32_t flags)
{
	struct sim_state *st = &f->st;
	struct sim_rsrc *r = &st->rsrc;
	uint32_t i;

	for (i = 0; i < MAX_OBJ; i++)
		if (!r->obj[i].used)
			break;
	if (i == MAX_OBJ)
		return -ENOMEM;
	if (i >= r->obj_hw) {
		J(f, &r->obj_hw);
		r->obj_hw = i + 1;
	}
	J(f, &st->serial);
	struct sim_obj *o = &r->obj[i];
	J(f, o);
	memset(o, 0, sizeof(*o));
	o->used = 1;
	o->kind = (uint8_t)kind;
	o->lni = lni;
	o->ref = ref;
	o->flags = flags;
	o->serial = ++st->serial;
	if (ref >= 0) {
		J(f, &r->obj[ref].refs);
		r->obj[ref].refs++;
	}
	return (int)i;
}

static void obj_unref(struct sim_file *f, struct sim_obj *o)
{
	if (o->ref < 0)
		return;
	struct sim_obj *t = &f->st.rsrc.obj[o->ref];
	J(f, &t->refs);
	t->refs--;
	o->ref = -1;
}

/* Free an object record, returning its charge. */
static void obj_free(struct sim_file *f, uint32_t i)
{
	struct sim_state *st = &f->st;
	struct sim_obj *o = &st->rsrc.obj[i];
	int t = obj_rsrc_type(o->kind);

	J(f, o);
	obj_unref(f, o);
	if (t >= 0)
		rsrc_uncharge(f, st->lni[o->lni].svc_id, t);
	memset(o, 0, sizeof(*o));
	/* The scans stop at the high-water mark: keep it at the last record in
	 * use, so what a call costs does not depend on the device's past. */
	struct sim_rsrc *r = &st->rsrc;
	if (i + 1 == r->obj_hw) {
		uint32_t hw = i;
		while (hw && !r->obj[hw - 1].used)
			hw--;
		J(f, &r->obj_hw);
		r->obj_hw = hw;
	}
}

/* The LNI is going (destroy, fd close, reaped owner): everything on it. */
static void objs_release(struct sim_file *f, int lni_idx)
{
	struct sim_rsrc *r = &f->st.rsrc;

	for (uint32_t i = 0; i < r->obj_hw; i++)
		if (r->obj[i].used && r->obj[i].lni == lni_idx)
			obj_free(f, i);
}

/* A parked object of this kind on the LNI, or -1. */
static int obj_parked(struct sim_file *f, int32_t lni, int kind)
{
	struct sim_rsrc *r = &f->st.rsrc;

	for (uint32_t i = 0; i < r->obj_hw; i++) {
		struct sim_obj *o = &r->obj[i];
		if (o->used && o->parked && o->lni == lni && o->kind == kind)
			return (int)i;
	}
	return -1;
}

/* Charge a new object of a kind, or reuse a parked one (EQ, PTE). */
static int obj_new(struct sim_file *f, struct sim_lni_handle *lh, int kind,
		   int32_t ref, uint32_t flags)
{
	struct sim_state *st = &f->st;
	int reuse = (kind == OBJ_EQ || kind == OBJ_PTE) ?
		    obj_parked(f, lh->idx, kind) : -1;

	if (reuse >= 0) {
		struct sim_obj *o = &st->rsrc.obj[reuse];
		J(f, o);
		o->parked = 0;
		o->ref = ref;
		o->flags = flags;
		J(f, &st->serial);
		o->serial = ++st->serial;
		if (ref >= 0) {
			J(f, &st->rsrc.obj[ref].refs);
			st->rsrc.obj[ref].refs++;
		}
		return reuse;
	}
	uint32_t svc_id = st->lni[lh->idx].svc_id;
	int t = obj_rsrc_type(kind);
	int rc = rsrc_charge(f, svc_id, t);
	if (rc && (kind == OBJ_TXQ || kind == OBJ_TGQ)) {
		/* finalize_cq_cleanups, then once more */
		struct sim_rsrc *r = &st->rsrc;
		for (uint32_t i = 0; i < r->obj_hw; i++) {
			struct sim_obj *o = &r->obj[i];
			if (o->used && o->parked && o->lni == lh->idx &&
			    (o->kind == OBJ_TXQ || o->kind == OBJ_TGQ))
				obj_free(f, i);
		}
		rc = rsrc_charge(f, svc_id, t);
	}
	if (rc)
		return rc;
	return obj_add(f, lh->idx, kind, ref, flags);
}

/* Handles: what the caller holds, one per allocation. */
struct sim_obj_handle {
	union {
		struct cxi_md md;
		struct cxi_eq eq;
		struct cxil_pte pte;
		struct cxi_cq cq;
		struct cxi_ct ct;
	} pub;			/* first: the caller sees libcxi's struct */
	struct sim_lni_handle *lni;
	int32_t idx;
	uint8_t kind;
	uint64_t serial;
};

#define OBJ_HANDLE(p) ((struct sim_obj_handle *)(void *)(p))

/* Lock the device of a live LNI handle. */
static int obj_begin(struct sim_lni_handle *lh, struct sim_file **fp)
{
	if (!lh->dev)
		return -EINVAL;	/* its device handle was closed */
	struct sim_file *f = lh->dev->sd->f;
	int rc = sim_lock(f);
	if (rc)
		return rc;
	rc = lni_check(f, lh);
	if (rc) {
		pthread_mutex_unlock(&f->lock);
		return rc;
	}
	*fp = f;
	return 0;
}

/*
 * Out of room: LNIs of dead processes may still hold objects (the kernel would
 * have freed them when their fd closed).  Undo this call's writes, release
 * those LNIs, and say whether trying again can help.
 */
static int reap_retry(struct sim_file *f, struct sim_lni_handle *lh)
{
	uint32_t before = f->st.reaped_lnis;

	jrollback(f);
	reap_dead(lh->dev->sd, 0);
	return f->st.reaped_lnis != before;
}

/* The state record behind a handle of the same device, or -1 (the
 * ucxi layer's -EINVAL for a handle that is not the client's). */
static int obj_of(struct sim_file *f, struct sim_lni_handle *lh,
		  const struct sim_obj_handle *h, int kind)
{
	if (!h || h->kind != kind || !h->lni || h->lni->dev != lh->dev)
		return -1;
	struct sim_obj *o = &f->st.rsrc.obj[h->idx];
	if (!o->used || o->parked || o->serial != h->serial)
		return -1;
	return h->idx;
}

static struct sim_obj_handle *handle_new(struct sim_file *f,
					 struct sim_lni_handle *lh, int idx,
					 int kind)
{
	struct sim_obj_handle *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	h->lni = lh;
	h->idx = idx;
	h->kind = (uint8_t)kind;
	h->serial = f->st.rsrc.obj[idx].serial;
	lh->nchild++;
	return h;
}

/* Destroy an object (kind) through its handle: -EBUSY while another object
 * refers to it; park (or free) its record; free the handle. */
static int obj_destroy(struct sim_obj_handle *h, int kind)
{
	if (!h || h->kind != kind)
		return -EINVAL;
	struct sim_lni_handle *lh = h->lni;
	if (!lh->dev) {		/* device closed: the object went with the LNI */
		lh->nchild--;
		free(h);
		return 0;
	}
	struct sim_file *f = lh->dev->sd->f;
	int rc = sim_lock(f);
	if (rc)
		return rc;
	struct sim_obj *o = &f->st.rsrc.obj[h->idx];
	if (o->used && !o->parked && o->serial == h->serial) {
		if (o->refs) {
			pthread_mutex_unlock(&f->lock);
			return -EBUSY;
		}
		if (kind == OBJ_MD) {
			obj_free(f, (uint32_t)h->idx);
		} else {
			J(f, o);
			obj_unref(f, o);
			o->parked = 1;
		}
	}
	lh->nchild--;
	free(h);
	return sim_unlock(f, 0);
}

/* The LCID for a new CP (cass_cp_rgid_find + cass_lcid_get), per LNI. */
static int cp_lcid(struct sim_file *f, struct sim_lni_handle *lh, unsigned int vni,
		   unsigned int tc, unsigned int tc_type, int cp_type)
{
	struct sim_state *st = &f->st;
	int share0 = cp_type != NON_TRIG_LCID;
	uint32_t used = 0;

	for (uint32_t i = 0; i < st->child_hw; i++) {
		struct sim_child *c = &st->child[i];
		if (!c->used || c->kind != CHILD_CP || c->lni != lh->idx)
			continue;
		/* the same {VNI, TC, type}: the driver hands out that CP again */
		if (c->vni == (uint16_t)vni && c->tc == tc && c->tc_type == tc_type &&
		    (share0 ? c->lcid == 0 : c->lcid != 0))
			return c->lcid;
		used |= 1u << c->lcid;
	}
	int lo = cp_type == NON_TRIG_LCID ? 1 : 0;
	int hi = cp_type == TRIG_LCID ? 1 : NUM_LCIDS;
	for (int l = lo; l < hi; l++)
		if (!(used & (1u << l)))
			return l;
	return -ENOSPC;
}

int cxil_alloc_cp(struct cxil_lni *lni, unsigned int vni,
		  enum cxi_traffic_class tc, enum cxi_traffic_class_type tc_type,
		  struct cxi_cp **cp)
{
	return cxil_alloc_trig_cp(lni, vni, tc, tc_type, ANY_LCID, cp);
}

int cxil_map(struct cxil_lni *lni, void *va, size_t len, uint32_t flags,
	     struct cxi_md_hints *hints, struct cxi_md **md)
{
	struct sim_lni_handle *lh = (struct sim_lni_handle *)lni;
	struct sim_file *f;

	if (!lni || !md)
		return -EINVAL;
	if (!len)
		return -EINVAL;
	if ((flags & CXI_MAP_PIN) && (flags & (CXI_MAP_FAULT | CXI_MAP_PREFETCH)))
		return -EINVAL;
	(void)hints;	/* page sizes: one AC shape here (4 KiB / 2 MiB) */
	int rc = obj_begin(lh, &f);
	if (rc)
		return rc;
again:
	rc = 0;
	struct sim_rsrc *r = &f->st.rsrc;
	uint32_t key = flags & ~(uint32_t)ATU_FLAGS_IGNORED;
	int ac = -1;
	uint32_t lacs = 0;
	for (uint32_t i = 0; i < r->obj_hw; i++) {
		struct sim_obj *o = &r->obj[i];
		if (!o->used || o->kind != OBJ_AC || o->lni != lh->idx)
			continue;
		lacs |= 1u << o->lac;
		if (o->flags == key)
			ac = (int)i;
	}
	if (ac < 0) {
		/* cass_ac_alloc: charge, then a LAC of the LNI's RGID */
		rc = rsrc_charge(f, f->st.lni[lh->idx].svc_id, CXI_RSRC_TYPE_AC);
		if (rc)
			goto out;
		int lac;
		for (lac = 0; lac < NUM_LACS && (lacs & (1u << lac)); lac++)
			;
		if (lac == NUM_LACS) {
			rc = -ENOSPC;
			goto out;
		}
		ac = obj_add(f, lh->idx, OBJ_AC, -1, key);
		if (ac < 0) {
			rc = ac;
			goto out;
		}
		r->obj[ac].lac = (uint8_t)lac;
	}
	int i = obj_add(f, lh->idx, OBJ_MD, ac, flags);
	if (i < 0) {
		rc = i;
		goto out;
	}
	r->obj[i].lac = r->obj[ac].lac;
	struct sim_obj_handle *h = handle_new(f, lh, i, OBJ_MD);
	if (!h) {
		rc = -ENOMEM;
		goto out;
	}
	uint64_t start = (uint64_t)(uintptr_t)va & ~(uint64_t)(PAGE_SZ - 1);
	uint64_t end = ((uint64_t)(uintptr_t)va + len + PAGE_SZ - 1) &
		       ~(uint64_t)(PAGE_SZ - 1);
	h->pub.md.va = start;
	h->pub.md.len = end - start;
	h->pub.md.iova = ((uint64_t)(i + 1) << 32) | (start & 0xFFFFFFFFu);
	h->pub.md.lac = r->obj[ac].lac;
	h->pub.md.page_shift = 12;
	h->pub.md.huge_shift = 21;
	h->pub.md.id = (unsigned)i + 1;
	*md = &h->pub.md;
out:
	if (rc == -ENOSPC && reap_retry(f, lh))
		goto again;
	return sim_unlock(f, rc);
}

int cxil_unmap(struct cxi_md *md)
{
	if (!md)
		return -EINVAL;
	return obj_destroy(OBJ_HANDLE(md), OBJ_MD);
}

int cxil_alloc_evtq(struct cxil_lni *lni, const struct cxi_md *md,
		    const struct cxi_eq_attr *attr, struct cxil_wait_obj *event_wait,
		    struct cxil_wait_obj *status_wait, struct cxi_eq **evtq)
{
	struct sim_lni_handle *lh = (struct sim_lni_handle *)lni;
	int passthrough;
	struct sim_file *f;

	/* libcxi */
	if (!lni || !attr || !evtq)
		return -EINVAL;
	passthrough = !!(attr->flags & CXI_EQ_PASSTHROUGH);
	if ((!passthrough && !md) || !attr->queue)
		return -EINVAL;
	(void)event_wait;
	(void)status_wait;
	/* cxi_eq_alloc */
	if (!attr->queue_len || attr->queue_len > (1ull << 32))
		return -EINVAL;
	if (attr->status_thresh_count &&
	    (attr->status_thresh_count > 4 || attr->status_thresh_base > 100 ||
	     attr->status_thresh_delta > 100 ||
	     ((attr->status_thresh_count - 1) * attr->status_thresh_delta +
	      (100 - attr->status_thresh_base)) > 100))
		return -EINVAL;
	if (((uintptr_t)attr->queue | attr->queue_len) & (PAGE_SZ - 1))
		return -EINVAL;
	if (!passthrough &&
	    ((uint64_t)(uintptr_t)attr->queue < md->va ||
	     (uint64_t)(uintptr_t)attr->queue + attr->queue_len > md->va + md->len))
		return -EINVAL;
	if ((attr->flags & CXI_EQ_REGISTER_PCT) && !has_cap(CAP_BIT_SYS_ADMIN))
		return -EPERM;
	int rc = obj_begin(lh, &f);
	if (rc)
		return rc;
again:
	rc = 0;
	int mdi = -1;
	if (!passthrough) {
		mdi = obj_of(f, lh, OBJ_HANDLE(md), OBJ_MD);
		if (mdi < 0) {
			rc = -EINVAL;
			goto out;
		}
	}
	int i = obj_new(f, lh, OBJ_EQ, mdi, (uint32_t)attr->flags);
	if (i < 0) {
		rc = i;
		goto out;
	}
	struct sim_obj_handle *h = handle_new(f, lh, i, OBJ_EQ);
	if (!h) {
		rc = -ENOMEM;
		goto out;
	}
	h->pub.eq.byte_size = (unsigned int)attr->queue_len;
	h->pub.eq.eqn = (unsigned)i + 1;
	*evtq = &h->pub.eq;
out:
	if (rc == -ENOSPC && reap_retry(f, lh))
		goto again;
	return sim_unlock(f, rc);
}

int cxil_destroy_evtq(struct cxi_eq *evtq)
{
	if (!evtq)
		return -EINVAL;
	return obj_destroy(OBJ_HANDLE(evtq), OBJ_EQ);
}

/* An EQ argument: NULL, or a live EQ of this client; else -EINVAL. */
static int eq_arg(struct sim_file *f, struct sim_lni_handle *lh, struct cxi_eq *evtq)
{
	if (!evtq)
		return -1;
	int i = obj_of(f, lh, OBJ_HANDLE(evtq), OBJ_EQ);
	return i < 0 ? -EINVAL : i;
}

int cxil_alloc_pte(struct cxil_lni *lni, struct cxi_eq *evtq,
		   struct cxi_pt_alloc_opts *opts, struct cxil_pte **pte)
{
	struct sim_lni_handle *lh = (struct sim_lni_handle *)lni;
	struct sim_file *f;

	if (!lni || !opts || !pte)
		return -EINVAL;
	int rc = obj_begin(lh, &f);
	if (rc)
		return rc;
again:
	rc = 0;
	int eq = eq_arg(f, lh, evtq);
	if (eq < -1) {
		rc = eq;
		goto out;
	}
	if (opts->ethernet && !has_cap(CAP_BIT_NET_RAW)) {
		rc = -EPERM;
		goto out;
	}
	int i = obj_new(f, lh, OBJ_PTE, eq, 0);
	if (i < 0) {
		rc = i;
		goto out;
	}
	struct sim_obj_handle *h = handle_new(f, lh, i, OBJ_PTE);
	if (!h) {
		rc = -ENOMEM;
		goto out;
	}
	h->pub.pte.ptn = (unsigned)i + 1;
	*pte = &h->pub.pte;
out:
	if (rc == -ENOSPC && reap_retry(f, lh))
		goto again;
	return sim_unlock(f, rc);
}

int cxil_destroy_pte(struct cxil_pte *pte)
{
	if (!pte)
		return -EINVAL;
	return obj_destroy(OBJ_HANDLE(pte), OBJ_PTE);
}

int cxil_alloc_cmdq(struct cxil_lni *lni, struct cxi_eq *evtq,
		    const struct cxi_cq_alloc_opts *opts, struct cxi_cq **cmdq)
{
	struct sim_lni_handle *lh = (struct sim_lni_handle *)lni;
	struct sim_file *f;

	if (!lni || !cmdq || !opts)
		return -EINVAL;
	int tx = !!(opts->flags & CXI_CQ_IS_TX);
	/* cxi_cq_alloc, in the driver's order */
	if ((unsigned)opts->policy > CXI_CQ_UPDATE_LOW_FREQ)
		return -EINVAL;
	if (!tx && opts->lpe_cdt_thresh_id > 3)
		return -EINVAL;
	/* count -> whole pages of 64-byte commands, a power-of-two of them */
	uint64_t count = opts->count > MIN_CQ_COUNT ? opts->count : MIN_CQ_COUNT;
	uint64_t pages = (count * 64 + PAGE_SZ - 1) / PAGE_SZ, p2 = 1;
	while (p2 < pages)
		p2 <<= 1;
	count = p2 * PAGE_SZ / 64;
	if (count > CXI_MAX_CQ_COUNT)
		return -E2BIG;
	int rc = obj_begin(lh, &f);
	if (rc)
		return rc;
again:
	rc = 0;
	int eq = eq_arg(f, lh, evtq);	/* ucxi looks the EQ up first */
	if (eq < -1) {
		rc = eq;
		goto out;
	}
	if (tx) {
		if ((opts->flags & CXI_CQ_TX_WITH_TRIG_CMDS) && opts->lcid != 0) {
			rc = -EINVAL;
			goto out;
		}
		/* cass_cp_find: a CP of the LNI's RGID holds the LCID */
		struct sim_state *st = &f->st;
		int found = 0;
		for (uint32_t i = 0; i < st->child_hw && !found; i++) {
			struct sim_child *c = &st->child[i];
			found = c->used && c->kind == CHILD_CP && c->lni == lh->idx &&
				c->lcid == opts->lcid;
		}
		if (!found) {
			rc = -EINVAL;
			goto out;
		}
	}
	if ((opts->flags & CXI_CQ_TX_ETHERNET) && !has_cap(CAP_BIT_NET_RAW)) {
		rc = -EPERM;
		goto out;
	}
	int kind = tx ? OBJ_TXQ : OBJ_TGQ;
	int i = obj_new(f, lh, kind, eq, opts->flags);
	if (i < 0) {
		rc = i;
		goto out;
	}
	struct sim_obj_handle *h = handle_new(f, lh, i, kind);
	if (!h) {
		rc = -ENOMEM;
		goto out;
	}
	h->pub.cq.size = (unsigned)count;
	h->pub.cq.idx = (unsigned)i;
	*cmdq = &h->pub.cq;
out:
	if (rc == -ENOSPC && reap_retry(f, lh))
		goto again;
	return sim_unlock(f, rc);
}

int cxil_destroy_cmdq(struct cxi_cq *cmdq)
{
	if (!cmdq)
		return -EINVAL;
	struct sim_obj_handle *h = OBJ_HANDLE(cmdq);
	return obj_destroy(h, h->kind == OBJ_TXQ ? OBJ_TXQ : OBJ_TGQ);
}

int cxil_alloc_ct(struct cxil_lni *lni, struct c_ct_writeback *wb,
		  struct cxi_ct **ct)
{
	struct sim_lni_handle *lh = (struct sim_lni_handle *)lni;
	struct sim_file *f;

	if (!lni || !ct)
		return -EINVAL;
	if ((uintptr_t)wb & 7)
		return -EINVAL;
	int rc = obj_begin(lh, &f);
	if (rc)
		return rc;
again:
	rc = 0;
	int i = obj_new(f, lh, OBJ_CT, -1, 0);
	if (i < 0) {
		rc = i;
		goto out;
	}
	struct sim_obj_handle *h = handle_new(f, lh, i, OBJ_CT);
	if (!h) {
		rc = -ENOMEM;
		goto out;
	}
	h->pub.ct.ctn = (unsigned)i + 1;
	h->pub.ct.wb = wb;
	*ct = &h->pub.ct;
out:
	if (rc == -ENOSPC && reap_retry(f, lh))
		goto again;
	return sim_unlock(f, rc);
}

int cxil_destroy_ct(struct cxi_ct *ct)
{
	if (!ct)
		return -EINVAL;
	return obj_destroy(OBJ_HANDLE(ct), OBJ_CT);
}

#define OCHECK(cond, ...) do { if (!(cond)) { \
	snprintf(msg, len, __VA_ARGS__); rc = -EUCLEAN; goto out; } } while (0)

/* Invariants of the accounting; caller holds the lock. */
static int objs_check(struct sim_file *f, char *msg, size_t len)
{
	struct sim_state *st = &f->st;
	struct sim_rsrc *r = &st->rsrc;
	static __thread uint16_t use[MAX_SVC][CXI_RSRC_TYPE_MAX];
	static __thread uint32_t refs[MAX_OBJ];
	uint32_t hw[CXI_RSRC_TYPE_MAX] = { 0 }, shared[CXI_RSRC_TYPE_MAX] = { 0 };
	int rc = 0;

	memset(use, 0, sizeof(use));
	memset(refs, 0, sizeof(refs));
	for (uint32_t i = 0; i < r->obj_hw; i++) {
		struct sim_obj *o = &r->obj[i];
		if (!o->used)
			continue;
		OCHECK(o->lni >= 0 && o->lni < MAX_LNI && st->lni[o->lni].used,
		      "object %u: no LNI", i);
		OCHECK(o->ref < 0 || (r->obj[o->ref].used && r->obj[o->ref].lni == o->lni),
		      "object %u: dangling reference", i);
		OCHECK(!o->parked || (o->ref < 0 && !o->refs), "object %u: parked with references", i);
		OCHECK(o->kind != OBJ_MD || (o->ref >= 0 && r->obj[o->ref].kind == OBJ_AC),
		      "MD %u: no AC", i);
		if (o->ref >= 0)
			refs[o->ref]++;
		int t = obj_rsrc_type(o->kind);
		if (t >= 0)
			use[st->lni[o->lni].svc_id - 1][t]++;
		if (o->kind == OBJ_AC)
			for (uint32_t k = i + 1; k < r->obj_hw; k++)
				OCHECK(!r->obj[k].used || r->obj[k].kind != OBJ_AC ||
				      r->obj[k].lni != o->lni ||
				      (r->obj[k].lac != o->lac && r->obj[k].flags != o->flags),
				      "ACs %u and %u: same LAC or flags", i, k);
	}
	for (uint32_t i = r->obj_hw; i < MAX_OBJ; i++)
		OCHECK(!r->obj[i].used, "object %u above the high-water mark %u", i, r->obj_hw);
	for (uint32_t i = 0; i < r->obj_hw; i++)
		OCHECK(!r->obj[i].used || r->obj[i].refs == refs[i],
		      "object %u: refs %u != %u", i, r->obj[i].refs, refs[i]);
	for (uint32_t s = 0; s < MAX_SVC; s++) {
		for (int t = 0; t < CXI_RSRC_TYPE_MAX; t++) {
			OCHECK(r->in_use[s][t] == use[s][t], "svc %u: in_use[%d] %u != %u",
			      s + 1, t, r->in_use[s][t], use[s][t]);
			if (!use[s][t])
				continue;
			const struct cxi_limits *lim = &st->svc[s].desc.limits.type[t];
			OCHECK(st->svc[s].used && use[s][t] <= lim->max,
			      "svc %u: in_use[%d] %u over max", s + 1, t, use[s][t]);
			hw[t] += use[s][t];
			if (use[s][t] > lim->res)
				shared[t] += use[s][t] - lim->res;
		}
	}
	for (int t = 0; t < CXI_RSRC_TYPE_MAX; t++) {
		OCHECK(hw[t] == r->hw_in_use[t] && hw[t] <= hw_ids[t],
		      "hw_in_use[%d] %u != %u", t, r->hw_in_use[t], hw[t]);
		OCHECK(shared[t] == r->shared_use[t] && shared[t] <= dev_totals[t],
		      "shared_use[%d] %u != %u", t, r->shared_use[t], shared[t]);
	}
out:
	return rc;
}

/* ------------------------------------------------------------------ */
/* Simulator extras */

int pycxi_sim_get_status(unsigned int dev_id, struct pycxi_sim_status *out)
{
	struct simdev *sd;
	int rc = sim_map(dev_id, &sd);

	if (rc)
		return rc;
	struct sim_file *f = sd->f;
	rc = sim_lock(f);
	if (rc)
		return rc;
	reap_dead(sd, 0);
	struct sim_state *st = &f->st;
	memset(out, 0, sizeof(*out));
	for (uint32_t i = 0; i < st->svc_hw; i++) {
		if (!st->svc[i].used)
			continue;
		out->services++;
		out->enabled_services += st->svc[i].enabled;
	}
	for (uint32_t i = 0; i < st->lni_hw; i++)
		out->lnis += st->lni[i].used;
	for (uint32_t i = 0; i < st->prof_hw; i++)
		out->profiles += st->prof[i].used;
	out->rmu_used = st->rmu_used;
	out->rgids_used = st->rgids_used;
	out->tle_pools_used = __builtin_popcount(st->tle_pools);
	out->le_pools_used = __builtin_popcount(st->le_pools);
	out->reaped_lnis = st->reaped_lnis;
	out->recoveries = f->recoveries;
	memcpy(out->reserved, st->reserved, sizeof(out->reserved));
	return sim_unlock(f, 0);
}

#define CHECK(cond, ...) do { if (!(cond)) { \
	snprintf(msg, len, __VA_ARGS__); rc = -EUCLEAN; goto out; } } while (0)

int pycxi_sim_check(unsigned int dev_id, char *msg, size_t len)
{
	struct simdev *sd;
	int rc = sim_map(dev_id, &sd);

	if (rc)
		return rc;
	struct sim_file *f = sd->f;
	rc = sim_lock(f);
	if (rc)
		return rc;
	struct sim_state *st = &f->st;
	uint32_t reserved[CXI_RSRC_TYPE_MAX] = { 0 };
	uint16_t tle = 0, le = 0;
	uint32_t rmu = 0, rgids = 0;
	static __thread uint32_t refs[MAX_PROF], lnis[MAX_SVC], kids[MAX_LNI];

	memset(refs, 0, sizeof(refs));
	memset(lnis, 0, sizeof(lnis));
	memset(kids, 0, sizeof(kids));
	if (msg && len)
		msg[0] = 0;
	CHECK(f->j.used == 0, "journal not empty");
	CHECK(svc_get(st, CXI_DEFAULT_SVC_ID) != NULL, "default service missing");
	for (uint32_t i = 0; i < st->child_hw; i++) {
		struct sim_child *c = &st->child[i];
		if (!c->used)
			continue;
		CHECK(c->lni >= 0 && st->lni[c->lni].used, "child %u: no LNI", i);
		kids[c->lni]++;
		if (c->prof >= 0) {
			CHECK(st->prof[c->prof].used, "child %u: no profile", i);
			refs[c->prof]++;
		}
	}
	for (uint32_t i = 0; i < st->lni_hw; i++) {
		struct sim_lni *l = &st->lni[i];
		if (!l->used)
			continue;
		CHECK(svc_get(st, l->svc_id), "LNI %u: no service %u", i, l->svc_id);
		CHECK(kids[i] == l->nchild, "LNI %u: nchild %u != %u", i,
		      l->nchild, kids[i]);
		lnis[l->svc_id - 1]++;
	}
	for (uint32_t i = 0; i < st->svc_hw; i++) {
		struct sim_svc *s = &st->svc[i];
		if (!s->used)
			continue;
		CHECK(s->desc.svc_id == i + 1, "svc %u: id %u", i + 1, s->desc.svc_id);
		CHECK(s->nlni == lnis[i], "svc %u: nlni %u != %u", i + 1, s->nlni, lnis[i]);
		uint32_t lpr = s->lpr ? s->lpr : 1;
		CHECK(s->nrgid == (s->nlni + lpr - 1) / lpr, "svc %u: rgids", i + 1);
		rgids += s->nrgid;
		for (int t = 0; t < CXI_RSRC_TYPE_MAX; t++) {
			reserved[t] += s->desc.limits.type[t].res;
			CHECK(s->desc.limits.type[t].res <= s->desc.limits.type[t].max,
			      "svc %u: res > max", i + 1);
		}
		if (s->tle_pool >= 0) {
			CHECK(!(tle & (1u << s->tle_pool)), "TLE pool %d shared", s->tle_pool);
			tle |= 1u << s->tle_pool;
		}
		if (s->le_pool >= 0) {
			CHECK(!(le & (1u << s->le_pool)), "LE pool %d shared", s->le_pool);
			le |= 1u << s->le_pool;
		}
		CHECK(s->desc.enable == s->enabled, "svc %u: enable bit", i + 1);
		for (int k = 0; k < CXI_SVC_MAX_VNIS; k++) {
			if (s->prof[k] < 0)
				continue;
			struct sim_prof *p = &st->prof[s->prof[k]];
			CHECK(p->used && p->owner == i + 1, "svc %u: profile %d", i + 1, s->prof[k]);
			if (k < s->desc.num_vld_vnis)
				CHECK(p->enabled == s->enabled, "svc %u: profile %d state",
				      i + 1, s->prof[k]);
		}
	}
	for (uint32_t i = 0; i < st->prof_hw; i++) {
		struct sim_prof *p = &st->prof[i];
		if (!p->used)
			continue;
		CHECK(p->refs == refs[i], "profile %u: refs %u != %u", i, p->refs, refs[i]);
		CHECK(p->owner == 0 || svc_get(st, p->owner), "profile %u: owner", i);
		rmu += p->enabled;
		for (uint32_t k = i + 1; k < st->prof_hw; k++)
			CHECK(!st->prof[k].used || !prof_clash(f, &st->prof[k], p->match,
							       p->ignore),
			      "profiles %u and %u overlap", i, k);
	}
	for (int t = 0; t < CXI_RSRC_TYPE_MAX; t++)
		CHECK(reserved[t] == st->reserved[t], "reserved[%d] %u != %u", t,
		      st->reserved[t], reserved[t]);
	CHECK(tle == st->tle_pools, "TLE pool bitmap");
	CHECK(le == st->le_pools, "LE pool bitmap");
	CHECK(rmu == st->rmu_used, "RMU count %u != %u", st->rmu_used, rmu);
	CHECK(rgids == st->rgids_used, "RGID count %u != %u", st->rgids_used, rgids);
	rc = objs_check(f, msg, len);
out:
	pthread_mutex_unlock(&f->lock);
	return rc;
}
