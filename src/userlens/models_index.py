"""Imports every SQLAlchemy model so Alembic (and create_all in tools) sees every table."""

from userlens.accounts.models import AccessKey, Account  # noqa: F401
from userlens.jobs.models import Job  # noqa: F401
from userlens.understanding.models import CustomAttributes, Feature, ReferencePanel, ShoppingIntent, Task, TaskRun  # noqa: F401
from userlens.orgs.models import AccessToken, ApiClient, Org, Sandbox  # noqa: F401
from userlens.profiles.models import Batch, BatchFile, Dataset, EventGroup, Identity, MergePolicy, ProfileFragment, StoreLoad  # noqa: F401
from userlens.profiles.export import ExportJob  # noqa: F401
from userlens.profiles.segments import SegmentDefinition, SegmentJob, SegmentMember  # noqa: F401
from userlens.profiles.system_jobs import StoreDeletion, SystemJob  # noqa: F401
