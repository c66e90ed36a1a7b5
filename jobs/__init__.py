"""The `facefab` command line and declarative job specs."""
