/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * pycxi: the service subset of the Cassini user ABI, written from the
 * driver's user ABI (docs/library.md, "The software CXI device").  Layouts are
 * byte-identical to upstream cxi-abi.h on LP64; tests/test_core_abi.py checks
 * every offset.  Installed as <uapi/ethernet/cxi-abi.h> like upstream.
 */
#ifndef PYCXI_UAPI_CXI_ABI_H
#define PYCXI_UAPI_CXI_ABI_H

#include <stdint.h>
#include <stdbool.h>

/* This header provides the netns member type (patched 12/13.x flavour). */
#define CXI_HAVE_SVC_MEMBER_NET_NS 1

enum cxi_command_opcode {
	CXI_OP_LNI_ALLOC = 1,
	CXI_OP_LNI_FREE = 2,
	CXI_OP_DOMAIN_RESERVE = 3,
	CXI_OP_DOMAIN_ALLOC = 4,
	CXI_OP_CP_ALLOC = 6,
	CXI_OP_SVC_LIST_GET = 27,
	CXI_OP_SVC_ALLOC = 28,
	CXI_OP_SVC_DESTROY = 29,
	CXI_OP_SVC_UPDATE = 44,
	CXI_OP_SVC_GET = 45,
	CXI_OP_SVC_RSRC_LIST_GET = 49,
	CXI_OP_SVC_RSRC_GET = 50,
	CXI_OP_SVC_SET_LPR = 53,
	CXI_OP_SVC_GET_LPR = 54,
	CXI_OP_CP_MODIFY = 77,
	CXI_OP_SVC_SET_EXCLUSIVE_CP = 78,
	CXI_OP_SVC_GET_EXCLUSIVE_CP = 79,
	CXI_OP_SVC_ENABLE = 80,
	CXI_OP_SVC_SET_VNI_RANGE = 81,
	CXI_OP_SVC_GET_VNI_RANGE = 82,
	CXI_OP_TRIG_CP_ALLOC = 83,
	CXI_OP_SVC_SET_NETNS = 84,
	CXI_OP_SVC_GET_NETNS = 85,
	CXI_OP_MAX = 86,
};

enum cxi_traffic_class {
	CXI_TC_DEDICATED_ACCESS,
	CXI_TC_LOW_LATENCY,
	CXI_TC_BULK_DATA,
	CXI_TC_BEST_EFFORT,
	CXI_TC_ETH,
	CXI_TC_MAX,
};

enum cxi_eth_traffic_class {
	CXI_ETH_TC1 = CXI_TC_MAX,
	CXI_ETH_SHARED,
	CXI_ETH_TC2,
};

enum cxi_traffic_class_type {
	CXI_TC_TYPE_DEFAULT,
	CXI_TC_TYPE_HRP,
	CXI_TC_TYPE_RESTRICTED,
	CXI_TC_TYPE_COLL_LEAF,
	CXI_TC_TYPE_MAX,
};

enum cxi_trig_cp {
	TRIG_LCID,
	NON_TRIG_LCID,
	ANY_LCID,
};

enum cxi_rsrc_type {
	CXI_RSRC_TYPE_PTE,
	CXI_RSRC_TYPE_TXQ,
	CXI_RSRC_TYPE_TGQ,
	CXI_RSRC_TYPE_EQ,
	CXI_RSRC_TYPE_CT,
	CXI_RSRC_TYPE_LE,
	CXI_RSRC_TYPE_TLE,
	CXI_RSRC_TYPE_AC,
	CXI_RSRC_TYPE_MAX,
};

struct cxi_limits {
	uint16_t max;
	uint16_t res;
};

struct cxi_rsrc_limits {
	union {
		struct {
			struct cxi_limits ptes;
			struct cxi_limits txqs;
			struct cxi_limits tgqs;
			struct cxi_limits eqs;
			struct cxi_limits cts;
			struct cxi_limits les;
			struct cxi_limits tles;
			struct cxi_limits acs;
		};
		struct cxi_limits type[CXI_RSRC_TYPE_MAX];
	};
};

struct cxi_rsrc_use {
	unsigned int svc_id;	/* 0 would mean "whole device"; never used */
	unsigned int tle_pool_id;
	uint16_t in_use[CXI_RSRC_TYPE_MAX];
};

enum cxi_svc_member_type {
	CXI_SVC_MEMBER_IGNORE,
	CXI_SVC_MEMBER_UID,
	CXI_SVC_MEMBER_GID,
	CXI_SVC_MEMBER_NET_NS,	/* same value as SHS 14.0 */
	CXI_SVC_MEMBER_MAX,
};

struct cxi_svc_fail_info {
	uint16_t rsrc_avail[CXI_RSRC_TYPE_MAX];
	bool no_le_pools;
	bool no_tle_pools;
	bool no_cntr_pools;
};

#define CXI_SVC_MAX_MEMBERS 2
#define CXI_SVC_MAX_VNIS 4
#define CXI_DEFAULT_SVC_ID 1

struct cxi_svc_desc {
	uint8_t
		restricted_members:1,
		restricted_vnis:1,
		restricted_tcs:1,
		resource_limits:1,
		enable:1,
		is_system_svc:1,
		cntr_pool_id:2;
	uint8_t num_vld_vnis;
	uint16_t vnis[CXI_SVC_MAX_VNIS];
	bool tcs[CXI_TC_MAX];
	struct {
		union cxi_svc_member {
			unsigned int uid;	/* __kernel_uid_t */
			unsigned int gid;	/* __kernel_gid_t */
			unsigned int netns;	/* netns inode (NET_NS members) */
		} svc_member;
		enum cxi_svc_member_type type;
	} members[CXI_SVC_MAX_MEMBERS];
	struct cxi_rsrc_limits limits;
	unsigned int svc_id;
};


/* ---- Objects an application allocates on an LNI (cxil_map, EQs, CQs, PTEs).
 * Same names, values and layouts as upstream; only the fields and flags that
 * the software device looks at are commented. */

enum cxi_cq_update_policy {
	CXI_CQ_UPDATE_ALWAYS,
	CXI_CQ_UPDATE_HIGH_FREQ_EMPTY,
	CXI_CQ_UPDATE_LOW_FREQ_EMPTY,
	CXI_CQ_UPDATE_LOW_FREQ,
};

#define CXI_MAX_CQ_COUNT (1 << 16)

enum {
	CXI_CQ_USER = (1 << 0),
	CXI_CQ_IS_TX = (1 << 1),		/* a TXQ; otherwise a TGQ */
	CXI_CQ_TX_ETHERNET = (1 << 2),		/* CAP_NET_RAW */
	CXI_CQ_TX_WITH_TRIG_CMDS = (1 << 3),	/* only LCID 0 */
};

struct cxi_cq_alloc_opts {
	unsigned int count;
	enum cxi_cq_update_policy policy;
	unsigned int stat_cnt_pool;
	uint32_t flags;
	unsigned int lcid;		/* TX: a CP of the LNI must hold it */
	unsigned int lpe_cdt_thresh_id;	/* target: 0..3 */
};

enum {
	CXI_MAP_PIN       = (1 << 0),
	CXI_MAP_ATS       = (1 << 1),
	CXI_MAP_WRITE     = (1 << 2),
	CXI_MAP_READ      = (1 << 3),
	CXI_MAP_FAULT     = (1 << 4),
	CXI_MAP_NOCACHE   = (1 << 5),
	CXI_MAP_USER_ADDR = (1 << 6),
	CXI_MAP_ATS_PT    = (1 << 7),
	CXI_MAP_ATS_DYN   = (1 << 8),
	CXI_MAP_DEVICE    = (1 << 9),
	CXI_MAP_UNUSED    = (1 << 10),
	CXI_MAP_ALLOC_MD  = (1 << 11),
	CXI_MAP_PREFETCH  = (1 << 12),
};

struct cxi_pt_alloc_opts {
	uint64_t en_event_match         :  1;
	uint64_t clr_remote_offset      :  1;
	uint64_t en_flowctrl            :  1;
	uint64_t use_long_event         :  1;
	uint64_t lossless               :  1;
	uint64_t en_restricted_unicast_lm :  1;
	uint64_t use_logical            :  1;
	uint64_t is_matching            :  1;
	uint64_t do_space_check         :  1;
	uint64_t en_align_lm            :  1;
	uint64_t en_sw_hw_st_chng       :  1;
	uint64_t ethernet               :  1;	/* CAP_NET_RAW */
	uint64_t signal_invalid         :  1;
	uint64_t signal_underflow       :  1;
	uint64_t signal_overflow        :  1;
	uint64_t signal_inexact         :  1;
	uint64_t en_match_on_vni        :  1;
};

struct cxi_md {
	uint64_t iova;
	uint64_t va;
	size_t len;
	uint8_t lac;		/* the LNI's logical address context of its AC */
	int page_shift;
	int huge_shift;
	unsigned int id;
};

struct cxi_md_hints {
	int page_shift;
	int huge_shift;
	int ptg_mode;
	bool ptg_mode_valid;
	int dmabuf_fd;
	unsigned long dmabuf_offset;
	bool dmabuf_valid;
};

enum {
	CXI_EQ_USER = (1 << 0),
	CXI_EQ_PASSTHROUGH = (1 << 1),	/* no MD needed */
	CXI_EQ_INIT_LONG = (1 << 2),
	CXI_EQ_TGT_LONG = (1 << 3),
	CXI_EQ_DROP_STATUS_DISABLE = (1 << 4),
	CXI_EQ_TIMESTAMP_EVENTS = (1 << 5),
	CXI_EQ_EC_DISABLE = (1 << 6),
	CXI_EQ_REGISTER_PCT = (1 << 7),	/* CAP_SYS_ADMIN */
};

struct cxi_eq_attr {
	void *queue;		/* page aligned, inside the MD */
	size_t queue_len;	/* page aligned, non-zero */
	uint64_t flags;
	unsigned int status_thresh_base;
	unsigned int status_thresh_delta;
	unsigned int status_thresh_count;
	unsigned int ec_delay;
	unsigned int cpu_affinity;
	unsigned int reserved_slots;
};

#endif /* PYCXI_UAPI_CXI_ABI_H */
