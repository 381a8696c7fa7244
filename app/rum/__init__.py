"""Digital River Remote User Management (SSO) callbacks: XML messages and their handling."""
