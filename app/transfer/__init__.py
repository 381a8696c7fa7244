"""Bulk import and export of users, and the cross-link audit of the live store."""
