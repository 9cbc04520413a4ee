"""``python -m ssjobs`` and the ``ssjobs`` console script: the command line.

Nothing but the standard library is imported before :func:`ssjobs.syspath.isolate` has
taken the current directory and ``PYTHONPATH`` off ``sys.path`` (``ssjobs/__init__.py``
imports only ``ssjobs.errors``): the master runs as root until it drops privileges.
"""


def main() -> None:
    from ssjobs.syspath import isolate

    isolate()
    from ssjobs.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
