"""Imports every SQLAlchemy model so Alembic (and create_all in tools) sees every table."""

from userlens.accounts.models import AccessKey, Account  # noqa: F401
from userlens.jobs.models import Job  # noqa: F401
from userlens.understanding.models import CustomAttributes, Feature, Task, TaskRun  # noqa: F401
