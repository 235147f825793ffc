"""Alembic migrations of the control-plane schema (a package so that installs carry them)."""
