"""stemloop: self-iterating separation of single-track archival recordings.

This folder is the ground floor: what every room shares (the config schema, the
user-facing errors, file helpers, the names of metrics and files). It imports nothing
else of the project. The rooms install beneath it, each importing only rooms below it:

    stemloop.flows     Prefect flows, and the command line (flows/cli/)
    stemloop.tasks     Prefect tasks, the state folder and MLflow tracking
    stemloop.adapt     models, separation, training, scoring
    stemloop.datasets  audio, the library, the mix bus, culling
    stemloop           this ground floor

``tests/test_layout.py`` reads every import and fails on an arrow that runs back up.
"""
