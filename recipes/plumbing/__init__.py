"""Run plumbing of the recipes: :mod:`~recipes.plumbing.config` (dataclass configs → command-line options,
``--config FILE``, value checks), :mod:`~recipes.plumbing.run` (what every recipe does before, during and after
training; :func:`~recipes.plumbing.run.run_main`: errors → one line on stderr and exit status 2),
:mod:`~recipes.plumbing.report` (the report blocks and ``report.json``) and :mod:`~recipes.plumbing.compare` (the
compression methods lined up at one budget: table and plot)."""
