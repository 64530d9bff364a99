"""The workbench: a web app where a research team runs the whole loop and reviews outputs blind.

    tunesmith ui [PROJECTS_DIR] [--port 8700] [--api-key KEY]
    from tunesmith.workbench.app import create_app; app = create_app("projects")

app.py      routes, sign-in, CSRF, pages (Jinja2 templates/, static/ — no CDN, no build step)
db.py       SQLite under PROJECTS_DIR (WAL): projects, jobs, review pairs and ratings
projects.py a project from an uploaded repository zip (safely unpacked) or dataset file
jobs.py     one queue, one job process at a time; restart-safe through pid + process start time
worker.py   what a job process runs: the CLI's own stage functions
review.py   blind pairwise review: pairs, win rates, Bradley–Terry, kappa, exports, the report join
"""
