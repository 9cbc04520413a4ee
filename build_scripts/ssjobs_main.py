"""Entry script of the one-file binary: the same command line as ``python -m ssjobs``.

``multiprocessing.freeze_support()`` lets consumer code use multiprocessing's ``spawn`` and
``forkserver`` start methods (they re-run ``sys.executable``, i.e. this binary); the default
``fork`` needs nothing. PyInstaller's multiprocessing runtime hook has already imported
multiprocessing, so the call costs nothing on a normal start.
"""
import sys

if __name__ == "__main__":
    if "multiprocessing" in sys.modules:
        sys.modules["multiprocessing"].freeze_support()

    # Before anything outside the bundle could be imported: never the current directory
    # or PYTHONPATH (the master runs as root until it drops privileges).
    from ssjobs.syspath import isolate

    isolate()
    from ssjobs.cli import main

    main()
