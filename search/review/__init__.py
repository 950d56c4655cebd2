"""What a person reads in the morning: the front as a terminal table, its plots, the study's
parent MLflow run kept up to date, and the HTML report. Reads the front
(:mod:`search.front`); decides nothing."""
