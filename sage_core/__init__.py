"""sagetrain's shared core: the SAGE optimizer, the training engine, the database layer,
the job spec and settings. Importing this package is cheap: nothing heavy loads here."""

__version__ = "0.1.0"
