"""AEP tenancy: IMS organisations, their sandboxes, client credentials and the access tokens
userlens issues itself (the OAuth server-to-server flow of Adobe IMS)."""
