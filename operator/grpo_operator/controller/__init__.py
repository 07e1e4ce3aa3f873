"""The Kubernetes controller: Kopf handlers, a work queue, one pure lifecycle decision
per job, and the I/O around it (API calls, progress polling, Prometheus metrics)."""
