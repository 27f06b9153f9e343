/* alloc_svc + destroy_svc cycle, timed in C: the floor for the Python ratio. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "libcxi/libcxi.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 100000;
	struct cxil_dev *dev;
	struct cxi_svc_desc d;
	int rc = cxil_open_device(0, &dev);

	if (rc) {
		fprintf(stderr, "cxil_open_device: %d\n", rc);
		return 1;
	}
	memset(&d, 0, sizeof(d));
	d.restricted_vnis = 1;
	d.num_vld_vnis = 1;
	d.vnis[0] = 4242;
	d.resource_limits = 1;	/* no TLE pool: what the CNI plugin asks */
	double t0 = now();
	for (long i = 0; i < n; i++) {
		int id = cxil_alloc_svc(dev, &d, NULL);
		if (id < 0 || (rc = cxil_destroy_svc(dev, id))) {
			fprintf(stderr, "cycle %ld: %d %d\n", i, id, rc);
			return 1;
		}
	}
	double dt = now() - t0;
	printf("{\"cycles\": %ld, \"ns_per_cycle\": %.1f}\n", n, dt / n * 1e9);
	cxil_close_device(dev);
	return 0;
}
