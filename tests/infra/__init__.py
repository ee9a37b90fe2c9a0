"""Test infrastructure: a real S3 server (SeaweedFS), throwaway PostgreSQL databases and the
pytest plumbing that runs the suite against every backend combination (see `backends`)."""
