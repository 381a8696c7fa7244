"""SSO session tokens that the merchant's site issues and Digital River validates."""
