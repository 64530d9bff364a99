"""The workbench: a web app where a research team runs the whole loop and reviews outputs blind.

    tunesmith ui [PROJECTS_DIR] [--port 8700] [--api-key-file FILE]
    from tunesmith.workbench.app import create_app; app = create_app("projects")

app.py      create_app: middleware (web.Guard, sign-in, CSRF), error pages, the routers; `tunesmith ui`
site.py     what every page shares: templates, the queue, the owner's policy, lookups
routes/     one router per page: sign-in, projects, jobs, verdict, review, chat and export
contract.py the form is the contract: the keys a form may set, the checks every job's config passes
security.py server-side sessions, CSRF bound to them, the sign-in backoff, small forms
db.py       SQLite under PROJECTS_DIR (WAL): projects, jobs, review pairs and ratings, sessions; every query
projects.py a project from an uploaded repository zip (safely unpacked) or dataset file
jobs.py     one queue, one job process at a time; restart-safe through pid + process start time
worker.py   what a job process runs: the CLI's own stage functions
review.py   blind pairwise review: pairs, win rates, Bradley–Terry, kappa, exports, the report join
views.py    what pages show: config values, progress, markdown, the chat models
"""
