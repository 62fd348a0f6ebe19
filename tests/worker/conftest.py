"""Worker tests: a migrated database (each backend), an artifact store, and a queued job."""

from service_fixtures import *  # noqa: F403
from worker_helpers import env  # noqa: F401 (the fixture)
