"""The worker: turns a queued job row into a `sage_core.training` run.

`worker.runner.run_job(job_id)` is the one entry point, however the job was handed over:
the embedded executor starts `python -m worker run JOB_ID` in a child process, and so does
the Celery task `sagetrain.jobs.run` (`worker.celery_app`, `worker.supervisor`).
"""
