"""The tools built on the library: the command line (``train``, ``bench``) and the benchmark suite.

They import the core; the core never imports them.
"""
