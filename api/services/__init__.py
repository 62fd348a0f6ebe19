"""What the routes do, kept out of the handlers: paging, storing files, creating and
steering jobs, streaming archives. Plain functions over a session; no HTTP types."""
