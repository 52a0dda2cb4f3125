"""The command-line recipes (thin scripts: ``python recipes/<name>.py --help``) and their run plumbing
(:mod:`recipes.plumbing`: options from dataclass configs, ``--config`` re-runs, report printing, errors → one line and
exit status 2, the method comparison). Library code lives in ``models``, ``kd`` and ``pruning``, which never import
this package."""
