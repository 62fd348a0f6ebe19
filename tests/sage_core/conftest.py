"""sage_core's tests: a migrated database (each backend) for db/, and the `env` of jobs for
the supervision's tests."""

from service_fixtures import *  # noqa: F403
from worker_helpers import env, fake_python  # noqa: F401 (fixtures)
