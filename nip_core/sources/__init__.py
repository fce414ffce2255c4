"""Data sources: one loader module per dataset the engine knows (see nip_core.data)."""
