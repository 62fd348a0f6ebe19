"""One router per resource, joined in `api.main`."""
