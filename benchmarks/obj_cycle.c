/* Allocate + free cycles of each object type on one LNI, timed in C: the floor
 * for the Python ratio.  Every BATCH cycles the LNI is replaced (in Python too):
 * destroyed CTs stay charged to the service until their LNI goes, as on the NIC.
 * Prints, per type, the fastest batch's ns per cycle (the figure least disturbed
 * by the rest of a shared machine; bench_core.py takes the same for Python). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include "libcxi/libcxi.h"

#define BATCH 200

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const char *kinds[] = { "cp", "md", "eq", "pte", "txq", "tgq", "ct" };

static int cycle(struct cxil_lni *lni, int k, struct cxi_md *qmd, void *buf,
		 unsigned int lcid)
{
	int rc;

	switch (k) {
	case 0: {
		struct cxi_cp *cp;
		rc = cxil_alloc_cp(lni, 4242, CXI_TC_BEST_EFFORT, CXI_TC_TYPE_DEFAULT, &cp);
		return rc ? rc : cxil_destroy_cp(cp);
	}
	case 1: {
		struct cxi_md *md;
		rc = cxil_map(lni, buf, 4096, CXI_MAP_PIN | CXI_MAP_READ | CXI_MAP_WRITE,
			      NULL, &md);
		return rc ? rc : cxil_unmap(md);
	}
	case 2: {
		struct cxi_eq_attr attr = { .queue = buf, .queue_len = 4096 };
		struct cxi_eq *eq;
		rc = cxil_alloc_evtq(lni, qmd, &attr, NULL, NULL, &eq);
		return rc ? rc : cxil_destroy_evtq(eq);
	}
	case 3: {
		struct cxi_pt_alloc_opts opts = { 0 };
		struct cxil_pte *pte;
		rc = cxil_alloc_pte(lni, NULL, &opts, &pte);
		return rc ? rc : cxil_destroy_pte(pte);
	}
	case 4:
	case 5: {
		struct cxi_cq_alloc_opts opts = { .count = 1024, .lcid = lcid,
			.flags = k == 4 ? CXI_CQ_IS_TX : 0 };
		struct cxi_cq *cq;
		rc = cxil_alloc_cmdq(lni, NULL, &opts, &cq);
		return rc ? rc : cxil_destroy_cmdq(cq);
	}
	default: {
		struct cxi_ct *ct;
		rc = cxil_alloc_ct(lni, NULL, &ct);
		return rc ? rc : cxil_destroy_ct(ct);
	}
	}
}

int main(int argc, char **argv)
{
	long n = argc > 2 ? atol(argv[2]) : 100000;
	unsigned int svc_id = argc > 1 ? (unsigned)atoi(argv[1]) : 0;
	struct cxil_dev *dev;
	int rc = cxil_open_device(0, &dev);
	void *buf = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (rc || !svc_id || buf == MAP_FAILED) {
		fprintf(stderr, "usage: obj_cycle SVC_ID [CYCLES] (open: %d)\n", rc);
		return 1;
	}
	printf("{");
	for (int k = 0; k < 7; k++) {
		double best = 1e30;
		for (long done = 0; done < n; done += BATCH) {
			struct cxil_lni *lni;
			struct cxi_cp *cp;
			struct cxi_md *qmd;
			if ((rc = cxil_alloc_lni(dev, &lni, svc_id)) ||
			    (rc = cxil_alloc_cp(lni, 4242, CXI_TC_BEST_EFFORT,
						CXI_TC_TYPE_DEFAULT, &cp)) ||
			    (rc = cxil_map(lni, buf, 4096, CXI_MAP_PIN | CXI_MAP_READ |
					   CXI_MAP_WRITE, NULL, &qmd))) {
				fprintf(stderr, "setup: %d\n", rc);
				return 1;
			}
			long m = n - done < BATCH ? n - done : BATCH;
			double t0 = now();
			for (long i = 0; i < m; i++) {
				if ((rc = cycle(lni, k, qmd, buf, cp->lcid))) {
					fprintf(stderr, "%s cycle %ld: %d\n", kinds[k], done + i, rc);
					return 1;
				}
			}
			double dt = (now() - t0) / m;
			if (dt < best)
				best = dt;
			cxil_unmap(qmd);
			cxil_destroy_cp(cp);
			cxil_destroy_lni(lni);
		}
		printf("%s\"%s\": %.1f", k ? ", " : "", kinds[k], best * 1e9);
	}
	printf("}\n");
	cxil_close_device(dev);
	return 0;
}
