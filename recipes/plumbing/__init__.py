"""Run plumbing of the recipes, one job per module:

- :mod:`~recipes.plumbing.config`: dataclass configs → command-line options, ``--config FILE``, value limits;
- :mod:`~recipes.plumbing.run`: what every recipe does before and after its own work (``start_run``,
  ``start_kd_run``, ``finish_run``);
- :mod:`~recipes.plumbing.teachers`: the committed teacher and ``load_teachers`` (``--teacher A [B ...]``,
  ``--teacher-tta`` → one teacher module);
- :mod:`~recipes.plumbing.checks`: models, model arguments, a teacher against the data, checked before any work;
- :mod:`~recipes.plumbing.outdir`: the ``--out`` folder (earlier runs, ``--resume``, ``--overwrite``);
- :mod:`~recipes.plumbing.training`: the loss, iterators and ``fit_stage``, the one way a recipe trains;
- :mod:`~recipes.plumbing.deploy`: latency and ONNX export after training;
- :mod:`~recipes.plumbing.errors`: ``run_main``, errors → one line on stderr and exit status 2;
- :mod:`~recipes.plumbing.report`: the report blocks and ``report.json``;
- :mod:`~recipes.plumbing.compare`: the compression methods lined up at one budget (table and plot).
"""
