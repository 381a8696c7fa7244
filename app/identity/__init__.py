"""Users and their credentials: normalisation, hashing and the user service."""
