/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * pycxi: the service subset of the Cassini user ABI, written from the
 * behavioural contract (docs: cxi-svc-semantics.md §a).  Layouts are
 * byte-identical to upstream cxi-abi.h on LP64; tests/test_abi.py checks
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

#endif /* PYCXI_UAPI_CXI_ABI_H */
