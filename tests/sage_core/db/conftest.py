from service_fixtures import *  # noqa: F403
