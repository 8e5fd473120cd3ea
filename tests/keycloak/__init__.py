"""A real Keycloak for the test suite: download (bootstrap), run (server), administer (admin), pytest fixtures."""
