"""The workbench's routes, one router per page: each module's `router(site)` returns its APIRouter.

signin.py    /login, /logout, /health
projects.py  the project list, uploads, a project's page, check
jobs.py      training, stop, resume, a job's JSON, log and live events
verdict.py   compare, the verdict page, report.html
review.py    blind review: pairs, ratings, results, exports
chat.py      chat with the base and fine-tuned model, export
"""

# No `from __future__ import annotations` in these modules: FastAPI reads the routes' types at run time.
