"""Studies: grids (or Optuna searches) of runs launched by ``regrow sweep`` and turned into tables
and figures by ``regrow report``. :mod:`.names` holds what the two sides share."""
