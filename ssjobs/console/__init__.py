"""Operator commands beyond the master's lifecycle: ``push`` (feed jobs by hand), ``dead``
(inspect, retry and purge dead-lettered jobs) and ``top`` (a live view). One module per
command; ``ssjobs.cli`` only parses the arguments and calls ``run``-style functions here,
which print their own output and return the exit status (see ssjobs.control).
"""
