"""The worker: turns a queued job row into a `sage_core.training` run.

`worker.runner.run_job(job_id)` is the one entry point, however the job was handed over:
the embedded executor starts `python -m worker run JOB_ID` in a child process; a Celery
task (later) calls the same function with the same id.
"""
