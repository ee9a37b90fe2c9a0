"""AEP Real-time Customer Profile: catalog (datasets, batches), batch ingestion into the data lake,
the identity graph, merge policies and the profile store. See store.py for the storage design."""
