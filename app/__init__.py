"""Self-hosted user store behind Digital River's single sign-on."""
