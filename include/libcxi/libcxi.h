/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * pycxi: the libcxi service API, declared with upstream's signatures and
 * return conventions (negative errno; fail_info filled on -ENOSPC).  The
 * software CXI device in src/ implements exactly these functions; a system
 * libcxi provides the same ones.  Installed as <libcxi/libcxi.h>.
 */
#ifndef PYCXI_LIBCXI_H
#define PYCXI_LIBCXI_H

#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>
#include <errno.h>
#include "uapi/misc/cxi.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CXIL_API __attribute__((visibility("default")))
#define CXIL_DEVNAME_MAX 13
#define CXIL_DRVNAME_MAX 8
#define CXIL_FRUDESC_MAX 16

/* libcxi declares these next to the service API (SHS 14 / patched 13.x). */
#define CXIL_HAVE_SVC_NETNS 1

struct cxil_devinfo {
	unsigned int dev_id;
	union {
		unsigned int nic_addr;
		unsigned int nid;
	};
	unsigned int pid_bits;
	unsigned int pid_count;
	unsigned int pid_granule;
	unsigned int min_free_shift;
	unsigned int rdzv_get_idx;
	char device_name[CXIL_DEVNAME_MAX + 1];
	char driver_name[CXIL_DRVNAME_MAX + 1];
	unsigned int vendor_id;
	unsigned int device_id;
	unsigned int device_rev;
	unsigned int device_proto;
	unsigned int device_platform;
	uint16_t num_ptes;
	uint16_t num_txqs;
	uint16_t num_tgqs;
	uint16_t num_eqs;
	uint16_t num_cts;
	uint16_t num_acs;
	uint16_t num_tles;
	uint16_t num_les;
	uint16_t pci_domain;
	uint8_t pci_bus;
	uint8_t pci_device;
	uint8_t pci_function;
	size_t link_mtu;
	size_t link_speed;
	uint8_t link_state;
	int uc_nic;
	unsigned int pct_eq;
	int cassini_version;
	char fru_description[CXIL_FRUDESC_MAX];
	bool is_vf;
	int system_type_identifier;
};

struct cxil_dev {
	struct cxil_devinfo info;
};

struct cxil_lni {
	unsigned int id;
};

struct cxil_domain {
	unsigned int vni;
	unsigned int pid;
};

struct cxi_cp {
	unsigned int vni;
	enum cxi_traffic_class tc;
	enum cxi_traffic_class_type tc_type;
	unsigned int lcid;
};

struct cxil_device_list {
	unsigned int count;
	struct cxil_devinfo info[];
};

struct cxil_svc_list {
	unsigned int count;
	struct cxi_svc_desc descs[];
};

struct cxil_svc_rsrc_list {
	unsigned int count;
	struct cxi_rsrc_use rsrcs[];
};

#define C_PID_ANY 0x1FF

struct cxil_pte {
	unsigned int ptn;
};

/*
 * Upstream takes these three from the Cassini headers (cxi_prov_hw.h), where
 * they also carry mapped doorbells and queue pointers.  The software device
 * moves no data: only the fields naming the object are kept, under their
 * upstream names.
 */
struct cxi_eq {
	unsigned int byte_size;
	unsigned int eqn;
	void *context;
};

struct cxi_cq {
	unsigned int size;
	unsigned int idx;	/* TXQs 0..1023, TGQs 1024..1535 */
};

struct c_ct_writeback {
	uint64_t ct_success   : 48;
	uint8_t ct_failure    :  7;
	uint16_t unused       :  8;
	uint8_t ct_writeback  :  1;
};

struct cxi_ct {
	unsigned int ctn;
	struct c_ct_writeback *wb;
};

struct cxil_wait_obj;

CXIL_API int cxil_get_device_list(struct cxil_device_list **dev_list);
CXIL_API void cxil_free_device_list(struct cxil_device_list *dev_list);
CXIL_API int cxil_open_device(uint32_t dev_id, struct cxil_dev **dev);
CXIL_API void cxil_close_device(struct cxil_dev *dev);

CXIL_API int cxil_get_svc(struct cxil_dev *dev, unsigned int svc_id,
			  struct cxi_svc_desc *svc_desc);
CXIL_API int cxil_get_svc_list(struct cxil_dev *dev,
			       struct cxil_svc_list **svc_list);
CXIL_API void cxil_free_svc_list(struct cxil_svc_list *svc_list);
CXIL_API int cxil_get_svc_rsrc_use(struct cxil_dev *dev, unsigned int svc_id,
				   struct cxi_rsrc_use *rsrcs);
CXIL_API int cxil_get_svc_rsrc_list(struct cxil_dev *dev,
				    struct cxil_svc_rsrc_list **rsrc_list);
CXIL_API void cxil_free_svc_rsrc_list(struct cxil_svc_rsrc_list *rsrc_list);
CXIL_API int cxil_update_svc(struct cxil_dev *dev,
			     const struct cxi_svc_desc *desc,
			     struct cxi_svc_fail_info *fail_info);
CXIL_API int cxil_alloc_svc(struct cxil_dev *dev,
			    const struct cxi_svc_desc *desc,
			    struct cxi_svc_fail_info *fail_info);
CXIL_API int cxil_destroy_svc(struct cxil_dev *dev, unsigned int svc_id);
CXIL_API int cxil_set_svc_lpr(struct cxil_dev *dev, unsigned int svc_id,
			      unsigned int lnis_per_rgid);
CXIL_API int cxil_get_svc_lpr(struct cxil_dev *dev, unsigned int svc_id);
CXIL_API int cxil_svc_enable(struct cxil_dev *dev, unsigned int svc_id,
			     bool enable);
CXIL_API int cxil_svc_set_exclusive_cp(struct cxil_dev *dev,
				       unsigned int svc_id, bool exclusive_cp);
CXIL_API int cxil_svc_get_exclusive_cp(struct cxil_dev *dev,
				       unsigned int svc_id, bool *exclusive_cp);
CXIL_API int cxil_svc_set_vni_range(struct cxil_dev *dev, unsigned int svc_id,
				    uint16_t vni_min, uint16_t vni_max);
CXIL_API int cxil_svc_get_vni_range(struct cxil_dev *dev, unsigned int svc_id,
				    uint16_t *vni_min, uint16_t *vni_max);
CXIL_API int cxil_svc_set_netns(struct cxil_dev *dev, unsigned int svc_id,
				unsigned int netns);
CXIL_API int cxil_svc_get_netns(struct cxil_dev *dev, unsigned int svc_id,
				unsigned int *netns);

CXIL_API int cxil_alloc_lni(struct cxil_dev *dev, struct cxil_lni **lni,
			    unsigned int svc_id);
CXIL_API int cxil_destroy_lni(struct cxil_lni *lni);
CXIL_API int cxil_alloc_domain(struct cxil_lni *lni, unsigned int vni,
			       unsigned int pid, struct cxil_domain **domain);
CXIL_API int cxil_destroy_domain(struct cxil_domain *domain);
CXIL_API int cxil_alloc_cp(struct cxil_lni *lni, unsigned int vni,
			   enum cxi_traffic_class tc,
			   enum cxi_traffic_class_type tc_type,
			   struct cxi_cp **cp);
CXIL_API int cxil_alloc_trig_cp(struct cxil_lni *lni, unsigned int vni,
				enum cxi_traffic_class tc,
				enum cxi_traffic_class_type tc_type,
				enum cxi_trig_cp cp_type,
				struct cxi_cp **cp);
CXIL_API int cxil_destroy_cp(struct cxi_cp *cp);

CXIL_API int cxil_map(struct cxil_lni *lni, void *va, size_t len,
		      uint32_t flags, struct cxi_md_hints *hints,
		      struct cxi_md **md);
CXIL_API int cxil_unmap(struct cxi_md *md);
CXIL_API int cxil_alloc_evtq(struct cxil_lni *lni, const struct cxi_md *md,
			     const struct cxi_eq_attr *attr,
			     struct cxil_wait_obj *event_wait,
			     struct cxil_wait_obj *status_wait,
			     struct cxi_eq **evtq);
CXIL_API int cxil_destroy_evtq(struct cxi_eq *evtq);
CXIL_API int cxil_alloc_pte(struct cxil_lni *lni, struct cxi_eq *evtq,
			    struct cxi_pt_alloc_opts *opts,
			    struct cxil_pte **pte);
CXIL_API int cxil_destroy_pte(struct cxil_pte *pte);
CXIL_API int cxil_alloc_cmdq(struct cxil_lni *lni, struct cxi_eq *evtq,
			     const struct cxi_cq_alloc_opts *opts,
			     struct cxi_cq **cmdq);
CXIL_API int cxil_destroy_cmdq(struct cxi_cq *cmdq);
CXIL_API int cxil_alloc_ct(struct cxil_lni *lni, struct c_ct_writeback *wb,
			   struct cxi_ct **ct);
CXIL_API int cxil_destroy_ct(struct cxi_ct *ct);

#ifdef __cplusplus
}
#endif
#endif /* PYCXI_LIBCXI_H */
