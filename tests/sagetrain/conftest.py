"""The executor's tests: a migrated database (each backend), an artifact store, jobs."""

from service_fixtures import *  # noqa: F403
from worker_helpers import env, fake_python  # noqa: F401 (fixtures)
