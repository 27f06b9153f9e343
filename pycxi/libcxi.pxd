# Declarations only: a mirror of <libcxi/libcxi.h> and <uapi/misc/cxi.h> (service API).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "<stdbool.h>":
    ctypedef bint cbool "bool"


cdef extern from "libcxi/libcxi.h" nogil:
    int CXI_SVC_MAX_MEMBERS
    int CXI_SVC_MAX_VNIS
    int CXI_DEFAULT_SVC_ID
    int C_PID_ANY
    int CXI_SVC_MEMBER_MAX
    int CXI_RSRC_TYPE_MAX
    int CXI_TC_MAX
    # flags the object calls use (values: the header's enums)
    int CXI_MAP_PIN
    int CXI_MAP_READ
    int CXI_MAP_WRITE
    int CXI_CQ_IS_TX
    int CXI_EQ_PASSTHROUGH

    # The enums' members are declared once, for Python, in libcxi_enums.pyx; the C calls
    # here only need the types.
    ctypedef int cxi_traffic_class "enum cxi_traffic_class"
    ctypedef int cxi_traffic_class_type "enum cxi_traffic_class_type"
    ctypedef int cxi_trig_cp "enum cxi_trig_cp"
    ctypedef int cxi_cq_update_policy "enum cxi_cq_update_policy"

    cdef struct cxi_limits:
        uint16_t max
        uint16_t res

    cdef struct cxi_rsrc_limits:
        cxi_limits type[8]

    cdef struct cxi_rsrc_use:
        unsigned int svc_id
        unsigned int tle_pool_id
        uint16_t in_use[8]

    cdef struct cxi_svc_fail_info:
        uint16_t rsrc_avail[8]
        cbool no_le_pools
        cbool no_tle_pools
        cbool no_cntr_pools

    # members[i].svc_member is a union of uid/gid(/netns): one 32-bit value
    cdef union cxi_svc_member:
        unsigned int uid
        unsigned int gid

    cdef struct cxi_svc_desc:
        uint8_t restricted_members
        uint8_t restricted_vnis
        uint8_t restricted_tcs
        uint8_t resource_limits
        uint8_t enable
        uint8_t is_system_svc
        uint8_t cntr_pool_id
        uint8_t num_vld_vnis
        uint16_t vnis[4]
        cbool tcs[5]
        cxi_rsrc_limits limits
        unsigned int svc_id

    cdef struct cxil_devinfo:
        unsigned int dev_id
        unsigned int nid
        unsigned int pid_bits
        unsigned int pid_count
        unsigned int pid_granule
        char device_name[14]
        char driver_name[9]
        unsigned int vendor_id
        unsigned int device_id
        uint16_t num_ptes
        uint16_t num_txqs
        uint16_t num_tgqs
        uint16_t num_eqs
        uint16_t num_cts
        uint16_t num_acs
        uint16_t num_tles
        uint16_t num_les
        size_t link_mtu
        size_t link_speed
        uint8_t link_state
        cbool is_vf

    cdef struct cxil_dev:
        cxil_devinfo info

    cdef struct cxil_lni:
        unsigned int id

    cdef struct cxil_domain:
        unsigned int vni
        unsigned int pid

    cdef struct cxi_cp:
        unsigned int vni
        unsigned int lcid

    cdef struct cxi_md:
        uint64_t iova
        uint64_t va
        size_t len
        uint8_t lac
        unsigned int id

    cdef struct cxi_md_hints:
        pass

    cdef struct cxi_eq_attr:
        void *queue
        size_t queue_len
        uint64_t flags
        unsigned int status_thresh_base
        unsigned int status_thresh_delta
        unsigned int status_thresh_count
        unsigned int ec_delay
        unsigned int cpu_affinity
        unsigned int reserved_slots

    cdef struct cxi_eq:
        unsigned int eqn

    cdef struct cxil_pte:
        unsigned int ptn

    cdef struct cxi_pt_alloc_opts:
        uint64_t is_matching
        uint64_t ethernet

    cdef struct cxi_cq_alloc_opts:
        unsigned int count
        cxi_cq_update_policy policy
        unsigned int stat_cnt_pool
        uint32_t flags
        unsigned int lcid
        unsigned int lpe_cdt_thresh_id

    cdef struct cxi_cq:
        unsigned int size
        unsigned int idx

    cdef struct c_ct_writeback:
        pass

    cdef struct cxi_ct:
        unsigned int ctn

    cdef struct cxil_wait_obj:
        pass

    cdef struct cxil_device_list:
        unsigned int count
        cxil_devinfo info[1]

    cdef struct cxil_svc_list:
        unsigned int count
        cxi_svc_desc descs[1]

    cdef struct cxil_svc_rsrc_list:
        unsigned int count
        cxi_rsrc_use rsrcs[1]

    int cxil_get_device_list(cxil_device_list **dev_list)
    void cxil_free_device_list(cxil_device_list *dev_list)
    int cxil_open_device(uint32_t dev_id, cxil_dev **dev)
    void cxil_close_device(cxil_dev *dev)
    int cxil_get_svc(cxil_dev *dev, unsigned int svc_id, cxi_svc_desc *svc_desc)
    int cxil_get_svc_list(cxil_dev *dev, cxil_svc_list **svc_list)
    void cxil_free_svc_list(cxil_svc_list *svc_list)
    int cxil_get_svc_rsrc_use(cxil_dev *dev, unsigned int svc_id, cxi_rsrc_use *rsrcs)
    int cxil_get_svc_rsrc_list(cxil_dev *dev, cxil_svc_rsrc_list **rsrc_list)
    void cxil_free_svc_rsrc_list(cxil_svc_rsrc_list *rsrc_list)
    int cxil_update_svc(cxil_dev *dev, const cxi_svc_desc *desc, cxi_svc_fail_info *fail_info)
    int cxil_alloc_svc(cxil_dev *dev, const cxi_svc_desc *desc, cxi_svc_fail_info *fail_info)
    int cxil_destroy_svc(cxil_dev *dev, unsigned int svc_id)
    int cxil_set_svc_lpr(cxil_dev *dev, unsigned int svc_id, unsigned int lnis_per_rgid)
    int cxil_get_svc_lpr(cxil_dev *dev, unsigned int svc_id)
    int cxil_alloc_lni(cxil_dev *dev, cxil_lni **lni, unsigned int svc_id)
    int cxil_destroy_lni(cxil_lni *lni)
    int cxil_alloc_domain(cxil_lni *lni, unsigned int vni, unsigned int pid, cxil_domain **domain)
    int cxil_destroy_domain(cxil_domain *domain)
    int cxil_alloc_cp(cxil_lni *lni, unsigned int vni, cxi_traffic_class tc,
                      cxi_traffic_class_type tc_type, cxi_cp **cp)
    int cxil_alloc_trig_cp(cxil_lni *lni, unsigned int vni, cxi_traffic_class tc,
                           cxi_traffic_class_type tc_type, cxi_trig_cp cp_type, cxi_cp **cp)
    int cxil_destroy_cp(cxi_cp *cp)
    int cxil_map(cxil_lni *lni, void *va, size_t len, uint32_t flags, cxi_md_hints *hints,
                 cxi_md **md)
    int cxil_unmap(cxi_md *md)
    int cxil_alloc_evtq(cxil_lni *lni, const cxi_md *md, const cxi_eq_attr *attr,
                        cxil_wait_obj *event_wait, cxil_wait_obj *status_wait, cxi_eq **evtq)
    int cxil_destroy_evtq(cxi_eq *evtq)
    int cxil_alloc_pte(cxil_lni *lni, cxi_eq *evtq, cxi_pt_alloc_opts *opts, cxil_pte **pte)
    int cxil_destroy_pte(cxil_pte *pte)
    int cxil_alloc_cmdq(cxil_lni *lni, cxi_eq *evtq, const cxi_cq_alloc_opts *opts,
                        cxi_cq **cmdq)
    int cxil_destroy_cmdq(cxi_cq *cmdq)
    int cxil_alloc_ct(cxil_lni *lni, c_ct_writeback *wb, cxi_ct **ct)
    int cxil_destroy_ct(cxi_ct *ct)


# The build's netns flavour and the simulator extras (see compat.h).
cdef extern from "compat.h" nogil:
    const char *PYCXI_BACKEND_NAME
    int PYCXI_HAVE_MEMBER_NETNS_V "PYCXI_HAVE_MEMBER_NETNS_VALUE"
    int PYCXI_HAVE_SET_NETNS_V "PYCXI_HAVE_SET_NETNS_VALUE"
    int PYCXI_SVC_MEMBER_NET_NS
    unsigned int pycxi_member_value(const cxi_svc_desc *d, int i)
    int pycxi_member_type(const cxi_svc_desc *d, int i)
    void pycxi_member_set(cxi_svc_desc *d, int i, int type, unsigned int value)
    int pycxi_svc_set_netns(cxil_dev *dev, unsigned int svc_id, unsigned int netns)
    int pycxi_svc_get_netns(cxil_dev *dev, unsigned int svc_id, unsigned int *netns)
    # not in SHS 12.0.x's libcxi: -EOPNOTSUPP there (compat.h)
    int cxil_svc_enable "pycxi_x_svc_enable"(cxil_dev *dev, unsigned int svc_id, cbool enable)
    int cxil_svc_set_exclusive_cp "pycxi_x_svc_set_exclusive_cp"(
        cxil_dev *dev, unsigned int svc_id, cbool exclusive_cp)
    int cxil_svc_get_exclusive_cp "pycxi_x_svc_get_exclusive_cp"(
        cxil_dev *dev, unsigned int svc_id, cbool *exclusive_cp)
    int cxil_svc_set_vni_range "pycxi_x_svc_set_vni_range"(
        cxil_dev *dev, unsigned int svc_id, uint16_t vni_min, uint16_t vni_max)
    int cxil_svc_get_vni_range "pycxi_x_svc_get_vni_range"(
        cxil_dev *dev, unsigned int svc_id, uint16_t *vni_min, uint16_t *vni_max)

    cdef struct pycxi_sim_status:
        unsigned int services
        unsigned int enabled_services
        unsigned int lnis
        unsigned int profiles
        unsigned int rmu_used
        unsigned int rgids_used
        unsigned int tle_pools_used
        unsigned int le_pools_used
        unsigned int reaped_lnis
        unsigned int recoveries
        uint16_t reserved[8]
    const char *pycxi_sim_root "pycxi_x_sim_root"()
    int pycxi_sim_reset "pycxi_x_sim_reset"(unsigned int ndev)
    int pycxi_sim_get_status "pycxi_x_sim_get_status"(unsigned int dev_id, pycxi_sim_status *st)
    int pycxi_sim_check "pycxi_x_sim_check"(unsigned int dev_id, char *msg, size_t len)
