"""The ``taskplatform`` command and ``python -m taskplatform``.

Kept free of imports at module level: the command's own modules (Typer, Pydantic, FastAPI) take
half a second to import, and a Ctrl-C in that time must stop it as quietly as one later does.
"""

import sys


def main() -> None:
    """Run the command line; exit 130 without a traceback on a Ctrl-C that nothing else handled
    (one during the imports: each command handles its own afterwards)."""
    try:
        from taskplatform.cli import main as run_command_line

        run_command_line()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
