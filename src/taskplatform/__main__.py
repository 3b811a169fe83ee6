"""Allow ``python -m taskplatform``."""

from taskplatform.cli import main

main()
