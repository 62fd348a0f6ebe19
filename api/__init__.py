"""sagetrain's HTTP API (FastAPI). Imports sage_core's settings, schemas and db, never torch
or the worker: it queues work by job id through a `Dispatcher`."""
